#!/usr/bin/env python3
"""Response index: build time, reload time and query latency at ~500k (context, reply) pairs of real
corpora, against the one-line scikit-learn baseline measured in the same run.

Data: every open corpus in ../shared/corpora/open except CPED valid (the queries) and nothing from
lccc_toy/ or kdconv/, pairs kept up to 200 characters of reply and of last context utterance (the
shipped index keeps 50: with those limits the open corpora hold under 500k pairs), the first
`--max-pairs`. Queries: `--queries` contexts (the last utterance and up to 2 earlier turns) spread
over CPED valid, one at a time, one thread. Reference: `TfidfVectorizer` (the index's own word and
character bigram features, sublinear tf) over the same pairs' last utterances, and per query
`linear_kernel` against all of them, the top k by argpartition (on the first `--reference-queries`:
about a second each). `top1_agreement` is the share of those queries whose best pair is the reference's when the index reads the last utterance only
(history_weight 0): what dropping the commonest features (max_df) changes, ties apart. Ends with
one JSON line.

    flock /tmp/chitchat-bench.lock .venv/bin/python bench/index.py [--max-pairs 500000] [--queries 300]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread, before numpy loads
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.metrics.pairwise import linear_kernel  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chitchat.retrieval import IndexConfig, ResponseIndex  # noqa: E402
from chitchat.retrieval.analyze import features  # noqa: E402
from chitchat.tokens.normalize import normalize  # noqa: E402
from machine import busy_cores  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# evaluation data stays out: CPED valid is the queries; lccc_toy/ and kdconv/ are never indexed
SOURCES = ["cped_train.jsonl", "xpersona_zh_train.jsonl", "xiaoai_pairs.jsonl.xz", "smile_20k.jsonl",
           "crosswoz.jsonl.xz", "multiwoz_zh.jsonl.xz", "emollm.jsonl.xz", "cpsycoun.jsonl.xz", "smile_rest.jsonl.xz"]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def query_contexts(path: Path, n: int, history: int) -> list[list[str]]:
    """`n` contexts spread evenly over the dialogues of a JSON lines file."""
    contexts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)["dialog"]
        contexts += [d[max(0, i - history):i] for i in range(1, len(d))]
    step = max(1, len(contexts) // n)
    return contexts[::step][:n]


def timed(fn, items) -> tuple[list[float], list]:
    ms, out = [], []
    for item in items:
        t0 = time.perf_counter()
        out.append(fn(item))
        ms.append((time.perf_counter() - t0) * 1000)
    return ms, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpora", type=Path, default=ROOT.parent / "shared" / "corpora")
    p.add_argument("--max-pairs", type=int, default=500_000)
    p.add_argument("--max-chars", type=int, default=200, help="--max-reply-chars and --max-context-chars of the index")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--reference-queries", type=int, default=100, help="of those, how many the baseline answers (about 1 s each)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--no-reference", action="store_true", help="skip the scikit-learn baseline")
    args = p.parse_args()
    open_dir = args.corpora / "open"
    cfg = IndexConfig(max_reply_chars=args.max_chars, max_context_chars=args.max_chars)
    print(f"busy cores before the run: {busy_cores()}", file=sys.stderr)

    t0 = time.perf_counter()
    index, stats = ResponseIndex.from_corpora([str(open_dir / s) for s in SOURCES], cfg, max_pairs=args.max_pairs)
    build_s = time.perf_counter() - t0
    print(f"{stats.text()}\nbuilt {len(index)} pairs in {build_s:.1f} s", file=sys.stderr)
    work = tempfile.TemporaryDirectory(dir=ROOT / "runs" if (ROOT / "runs").is_dir() else None)  # removed at exit
    saved = Path(work.name) / "index"
    index.save(saved)
    index_mb = sum(f.stat().st_size for f in saved.iterdir()) / 1e6
    print(f"saved: {index_mb:.1f} MB", file=sys.stderr)
    reloads = []
    for _ in range(3):
        t0 = time.perf_counter()
        loaded = ResponseIndex.load(saved)
        reloads.append(time.perf_counter() - t0)
    contexts = query_contexts(open_dir / "cped_valid.jsonl", args.queries, cfg.max_history)
    loaded.query(contexts[0], args.k)  # jieba's dictionary loads on first use
    ms, hits = timed(lambda c: loaded.query(c, args.k), contexts)
    ms_last, last_hits = timed(lambda c: loaded.query(c, args.k, history_weight=0), contexts)
    t0 = time.perf_counter()
    loaded.query_many(contexts, args.k)
    batch_ms = (time.perf_counter() - t0) * 1000 / len(contexts)
    print(f"queries: p50 {percentile(ms, 50):.2f} ms, batched {batch_ms:.2f} ms each", file=sys.stderr)
    line = {
        "pairs": len(index), "index_build_s": round(build_s, 1), "reload_s": round(statistics.median(reloads), 3),
        "index_mb": round(index_mb, 1), "terms": index.meta["counts"]["terms"], "postings": index.meta["counts"]["postings"],
        "queries": len(contexts), "k": args.k,
        "query_ms_p50": round(percentile(ms, 50), 2), "query_ms_p90": round(percentile(ms, 90), 2),
        "query_ms_p50_last_only": round(percentile(ms_last, 50), 2), "query_many_ms_per_query": round(batch_ms, 2),
    }
    if not args.no_reference:
        last = index.context[:, 0]
        texts = [index.text(int(i)) for i in last]

        def analyzer(text: str) -> list[str]:
            return features(text, cfg.words, cfg.char_ngrams)

        t0 = time.perf_counter()
        vec = TfidfVectorizer(analyzer=analyzer, sublinear_tf=True)
        matrix = vec.fit_transform(texts)
        ref_build_s = time.perf_counter() - t0
        print(f"reference built in {ref_build_s:.1f} s", file=sys.stderr)

        def reference(context: list[str]) -> int:
            q = vec.transform([normalize(context[-1])[-cfg.max_context_chars:]])
            scores = linear_kernel(q, matrix).ravel()
            top = np.argpartition(-scores, args.k)[:args.k]
            return int(top[np.argmax(scores[top])])

        ref_ms, ref_top = timed(reference, contexts[:args.reference_queries])
        agree = [bool(h) and h[0].pair == r for h, r in zip(last_hits, ref_top)]
        ref_p50 = percentile(ref_ms, 50)
        line.update({"reference_build_s": round(ref_build_s, 1), "reference_query_ms_p50": round(ref_p50, 2),
                     "reference_query_ms_p90": round(percentile(ref_ms, 90), 2),
                     "speedup_vs_reference": round(ref_p50 / line["query_ms_p50"], 1),
                     "top1_agreement": round(sum(agree) / len(agree), 3)})
    line["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    line["busy_cores_after"] = busy_cores()
    for c, h in list(zip(contexts, hits))[:3]:
        print(f"{' / '.join(c)} -> {h[0].reply if h else None}", file=sys.stderr)
    work.cleanup()
    print(json.dumps(line))


if __name__ == "__main__":
    main()
