"""Corpora -> (context, reply) pairs: every corpus the readers accept (`chitchat.corpus.readers`), each
utterance normalised as for training (`chitchat.tokens.normalize`); pairs that make poor candidates
(long replies or contexts, a reply repeating the context's last utterance, exact duplicates) are
counted and left out, and a dialogue can be held out by a hash of its text."""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from chitchat.tokens.normalize import normalize
from chitchat.corpus.readers import ReadStats, read_corpus
from chitchat.retrieval.config import IndexConfig

_LOCATION = re.compile(r"(#[^#/]*)?(\[\d+\]|:\d+)$")  # "file:12", "file[3]", "file#train[3]" -> "file"


@dataclass(frozen=True)
class Pair:
    context: tuple[str, ...]  # up to max_history utterances, oldest first: the last one is what the reply answers
    reply: str
    source: str  # the corpus file


@dataclass
class PairStats:
    """What reading the pairs saw: the readers' counts, pairs kept and left out by reason, held-out dialogues."""

    read: ReadStats = field(default_factory=ReadStats)
    pairs: int = 0
    skipped: Counter = field(default_factory=Counter)
    per_source: Counter = field(default_factory=Counter)
    held_out: list[list[str]] = field(default_factory=list)  # normalised dialogues, for holdout.jsonl

    def text(self) -> str:
        r = self.read
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"files {r.files}  dialogues read {r.read}  held out {len(self.held_out)}\n"
                f"pairs {self.pairs}  left out {sum(self.skipped.values())} ({skipped})")


def held_out(utterances: list[str], every: int) -> bool:
    """One dialogue in `every`, by the CRC-32 of its normalised text: stable across runs and corpus order."""
    return every > 0 and zlib.crc32("\n".join(utterances).encode("utf-8")) % every == 0


def dialogue_pairs(utterances: list[str], cfg: IndexConfig, skipped: Counter,
                   vocab_chars: frozenset[str] | None = None) -> Iterator[tuple[tuple[str, ...], str]]:
    """(context, reply) for each utterance after the first of one normalised dialogue, unless left out."""
    for i in range(1, len(utterances)):
        reply, last = utterances[i], utterances[i - 1]
        if len(reply) > cfg.max_reply_chars:
            skipped["long_reply"] += 1
        elif len(last) > cfg.max_context_chars:
            skipped["long_context"] += 1
        elif reply == last:
            skipped["reply_repeats_context"] += 1
        elif vocab_chars is not None and not vocab_chars.issuperset(reply):
            skipped["reply_outside_vocabulary"] += 1  # the model would see [UNK] in it
        else:
            yield tuple(u[-cfg.max_context_chars:] for u in utterances[max(0, i - cfg.max_history):i]), reply


def read_pairs(inputs: Iterable[str], cfg: IndexConfig, stats: PairStats, fmt: str | None = None,
               vocab_chars: frozenset[str] | None = None) -> Iterator[Pair]:
    """The kept pairs of every dialogue of `inputs`, in corpus order; counts go to `stats`. With
    `vocab_chars`, replies holding a character outside that set are left out."""
    seen: set[int] = set()
    for d in read_corpus(inputs, stats.read, fmt):
        utterances = [u for u in map(normalize, d.utterances) if u]
        if len(utterances) < 2:
            stats.skipped["dialogue_under_2_utterances"] += 1
            continue
        if held_out(utterances, cfg.holdout_every):
            stats.held_out.append(utterances)
            continue
        source = _LOCATION.sub("", d.source)
        for context, reply in dialogue_pairs(utterances, cfg, stats.skipped, vocab_chars):
            key = hash((context, reply))
            if key in seen:
                stats.skipped["duplicate"] += 1
                continue
            seen.add(key)
            stats.pairs += 1
            stats.per_source[source] += 1
            yield Pair(context, reply, source)
