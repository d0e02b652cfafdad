#!/usr/bin/env python3
"""Evaluation throughput: replies per second of `chitchat eval`'s generation loop.

Shape (issue 5): `small` preset with random weights (and an MMI model of the same preset), the first
500 test cases of the shared LCCC toy valid split (contexts bounded like the chat's: 3 utterances),
replies of exactly 25 tokens (min_len = max_len, so that timing does not depend on the weights),
cases generated in batches of `--batch-size`. Measured: 1 candidate without MMI, and 5 candidates
ranked by MMI. The loop timed is `chitchat.eval.evaluate.run_model`, the one `chitchat eval` runs; the
metrics and the reference perplexity are not timed. Then coherence scoring (`chitchat.eval.scoring.
score_sets`, what `--negatives 9` costs): the first `--coherence-cases` cases, each reference with 9
distractors drawn from other dialogues, scored by likelihood, likelihood without context and MMI.
Ends with one JSON line.

    .venv/bin/python bench/eval.py [--cases 500] [--runs 3] [--batch-size 32] [--coherence-cases 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from chitchat.eval.cases import read_dialogues  # noqa: E402
from chitchat.eval.coherence import draw_negatives  # noqa: E402
from chitchat.eval.evaluate import EvalConfig, build_cases, run_model  # noqa: E402
from chitchat.eval.scoring import score_sets  # noqa: E402
from chitchat.engine.engine import Engine  # noqa: E402
from chitchat.engine.settings import ReplySettings  # noqa: E402
from chitchat.model.gpt2 import build_model  # noqa: E402
from chitchat.corpus.readers import ReadStats  # noqa: E402
from chitchat.tokens.tokenizer import DEFAULT_VOCAB, load_tokenizer  # noqa: E402

DATA = ROOT.parent / "shared" / "corpora" / "lccc_toy" / "valid.json"
REPLY_LEN = 25


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per mode (the median is reported)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core, as `chitchat eval`)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--coherence-cases", type=int, default=100, help="cases scored with 9 distractors each (0: skip)")
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"bench/eval.py: {args.data} not found (the shared corpora)", file=sys.stderr)
        return 2

    tokenizer = load_tokenizer(DEFAULT_VOCAB)
    engine = Engine(build_model(tokenizer, "small", seed=1).eval(), tokenizer,
                    build_model(tokenizer, "small", seed=2).eval(), threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = EvalConfig(models=["small"], data=[str(args.data)], output=Path(tmp), limit=args.cases,
                          batch_size=args.batch_size, progress=False)
        cases = build_cases(base, ReadStats())
        dialogues, _ = read_dialogues(base, ReadStats())
    context_tokens = sum(len(engine.context_ids(engine.fit_history([engine.encode(u) for u in c.context], REPLY_LEN)))
                         for c in cases) / len(cases)
    print(f"{len(cases)} cases from {args.data}, mean context {context_tokens:.1f} tokens, "
          f"replies of {REPLY_LEN} tokens, batch {args.batch_size}, threads {engine.threads or torch.get_num_threads()}")

    modes = {
        "replies_per_s": (ReplySettings(min_len=REPLY_LEN, max_len=REPLY_LEN, candidates=1, ranking="likelihood",
                                        seed=42), False),
        "replies_per_s_mmi": (ReplySettings(min_len=REPLY_LEN, max_len=REPLY_LEN, candidates=5, seed=42), True),
    }
    result = {"bench": "eval"}
    for key, (settings, mmi) in modes.items():
        cfg = EvalConfig(models=["small"], data=[], output=Path("."), batch_size=args.batch_size,
                         settings=settings, progress=False)
        run_model(engine, cases[: args.batch_size], cfg)  # warm-up
        rates = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = run_model(engine, cases, cfg)
            rates.append(len(cases) / (time.perf_counter() - t0))
            assert len(out["replies"]) == len(cases)
        label = "5 candidates + MMI" if mmi else "1 candidate, no MMI"
        print(f"{label}: {statistics.median(rates):.1f} replies/s (runs: {', '.join(f'{r:.1f}' for r in rates)})")
        result[key] = round(statistics.median(rates), 1)
    if args.coherence_cases:
        some = cases[: args.coherence_cases]
        sets = [(c.context, [c.reference, *negs]) for c, negs in zip(some, draw_negatives(dialogues, some, 9, seed=1))]
        names = ["likelihood", "mmi", "pmi"]
        score_sets(engine, sets[: args.batch_size], names, args.batch_size)  # warm-up
        rates = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            score_sets(engine, sets, names, args.batch_size)
            rates.append(len(sets) / (time.perf_counter() - t0))
        print(f"coherence, 10 candidates x 3 scorings: {statistics.median(rates):.1f} cases/s "
              f"(runs: {', '.join(f'{r:.1f}' for r in rates)})")
        result["coherence_cases_per_s"] = round(statistics.median(rates), 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
