"""Build a response index: the (context, reply) pairs of dialogue corpora behind a sparse TF-IDF index
of their contexts, saved as plain files (meta.json, index.npz) to put beside a model.

`chitchat index`: the command line over `chitchat.retrieval.ResponseIndex.from_corpora`. Retraining on new
corpora builds a new index the same way; `--holdout-every N` keeps one dialogue in N out of the index
and writes them to DIR/holdout.jsonl (for `chitchat eval --data DIR/holdout.jsonl`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from chitchat.corpus.readers import FORMATS
from chitchat.files import atomic_write
from chitchat.options import add_options, option, options_from_args
from chitchat.retrieval import IndexConfig, ResponseIndex

HOLDOUT = "holdout.jsonl"


@dataclass
class IndexInputs:
    inputs: list[str] = option(flag="INPUT", nargs="+", help="corpus files (.gz/.bz2/.xz/.zip too), folders, globs, "
                               "or chatterbot:LANG[.TOPIC]")
    output: Path = option(aliases=("-o",), metavar="DIR", help="index directory to write (replaced if it is an index)")
    model: str | None = option(None, metavar="DIR", help="the model directory (or vocab.txt) the index is for: its "
                               "tokenizer is recorded, and replies with characters outside its vocabulary are left out")
    format: str | None = option(None, choices=FORMATS, help="input format for every input (none: detected per file)")
    max_pairs: int | None = option(None, metavar="N", help="index only the first N pairs")


def add_arguments(p) -> None:
    add_options(p, IndexInputs)
    add_options(p, IndexConfig, group="index")


def run(args) -> int:
    inp, cfg = options_from_args(IndexInputs, args), options_from_args(IndexConfig, args)
    index, stats = ResponseIndex.from_corpora(inp.inputs, cfg, inp.model, inp.format, inp.max_pairs)
    for message in stats.read.errors:
        print(f"error: {message}", file=sys.stderr)
    for message in stats.read.warnings:
        print(f"warning: {message}", file=sys.stderr)
    if stats.read.warning_count > len(stats.read.warnings):
        print(f"warning: ... and {stats.read.warning_count - len(stats.read.warnings)} more skips", file=sys.stderr)
    index.save(inp.output)
    if stats.held_out:
        atomic_write(inp.output / HOLDOUT, "".join(json.dumps({"dialog": d}, ensure_ascii=False) + "\n"
                                                   for d in stats.held_out))
    size = sum(f.stat().st_size for f in inp.output.iterdir() if f.name != HOLDOUT)
    c = index.meta["counts"]
    print(stats.text())
    print(f"indexed {c['pairs']} pairs ({c['texts']} utterances, {c['terms']} terms, {c['postings']} postings) "
          f"in {index.meta['build_s']:.1f} s; {size / 1e6:.2f} MB on disk")
    print(f"wrote {inp.output}" + (f" and {inp.output / HOLDOUT} ({len(stats.held_out)} dialogues)" if stats.held_out else ""))
    return 0
