"""Build the character vocabulary deterministically: special tokens, the space, ASCII, the
characters of the given corpora, then the most frequent characters of jieba's dictionary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from chitchat.corpus.readers import ReadStats, read_corpus
from chitchat.options import option
from chitchat.tokens.normalize import normalize
from chitchat.tokens.tokenizer import DEFAULT_SIZE, MAX_VOCAB, build_vocab, write_vocab


def corpus_char_counts(inputs: list[str], fmt: str | None = None) -> tuple[Counter, ReadStats]:
    counts: Counter = Counter()
    stats = ReadStats()
    for d in read_corpus(inputs, stats, fmt):
        for u in d.utterances:
            counts.update(normalize(u).replace(" ", ""))
    return counts, stats


@dataclass
class VocabConfig:
    corpora: list[str] = option(flag="CORPUS", nargs="*",
                                help="corpora whose characters must be in the vocabulary")
    output: Path = option(aliases=("-o",), metavar="PATH", help="vocab.txt to write")
    size: int = option(DEFAULT_SIZE, metavar="N", help=f"number of entries (at most {MAX_VOCAB})")
    min_count: int = option(1, metavar="N", help="corpus characters seen fewer times are left to the general list")
    format: str | None = option(None, help="input format of the corpora (none: detected)")


def build_vocab_file(cfg: VocabConfig) -> str:
    """Write the vocabulary; returns the line that reports it."""
    counts, stats = corpus_char_counts(cfg.corpora, cfg.format) if cfg.corpora else (Counter(), ReadStats())
    tokens = build_vocab(counts, size=cfg.size, min_corpus_count=cfg.min_count)
    write_vocab(tokens, cfg.output)
    known = set(tokens)
    covered = sum(n for ch, n in counts.items() if ch in known)
    total = sum(counts.values())
    extra = f"; covers {100 * covered / total:.3f}% of {total} corpus characters" if total else ""
    return f"wrote {cfg.output}: {len(tokens)} entries{extra}"
