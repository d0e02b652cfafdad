"""Build the character vocabulary deterministically: special tokens, the space, ASCII, the
characters of the given corpora, then the most frequent characters of jieba's dictionary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from chitchat.corpus.normalize import normalize
from chitchat.corpus.readers import ReadStats, read_corpus
from chitchat.tokens.tokenizer import DEFAULT_SIZE, DEFAULT_VOCAB, MAX_VOCAB, build_vocab, write_vocab


def corpus_char_counts(inputs: list[str], fmt: str | None = None) -> tuple[Counter, ReadStats]:
    counts: Counter = Counter()
    stats = ReadStats()
    for d in read_corpus(inputs, stats, fmt):
        for u in d.utterances:
            counts.update(normalize(u).replace(" ", ""))
    return counts, stats


def add_arguments(p) -> None:
    p.add_argument("corpora", nargs="*", metavar="CORPUS", help="corpora whose characters must be in the vocabulary")
    p.add_argument("--output", "-o", type=Path, default=DEFAULT_VOCAB, help="vocab.txt to write")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"number of entries (at most {MAX_VOCAB})")
    p.add_argument("--min-count", type=int, default=1, help="corpus characters seen fewer times are left to the general list")
    p.add_argument("--format", default=None, help="input format of the corpora (default: detected)")


def run(args) -> int:
    counts, stats = corpus_char_counts(args.corpora, args.format) if args.corpora else (Counter(), ReadStats())
    tokens = build_vocab(counts, size=args.size, min_corpus_count=args.min_count)
    write_vocab(tokens, args.output)
    known = set(tokens)
    covered = sum(n for ch, n in counts.items() if ch in known)
    total = sum(counts.values())
    extra = f"; covers {100 * covered / total:.3f}% of {total} corpus characters" if total else ""
    print(f"wrote {args.output}: {len(tokens)} entries{extra}")
    return 0
