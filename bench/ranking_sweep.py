"""The sweep behind the chat's default ranking and reply cap (models/default/RANKING_SWEEP.md).

Two parts, one model pair, CPED validation dialogues, seed 1:

1. Coherence (`coherence`): every test case's true reply among `--negatives` replies drawn from other
   dialogues (as `chitchat eval --negatives` draws them), scored once by the dialogue model (given
   the context and given none) and the MMI model; then every ranking of RANKINGS (and a grid of
   weighted mixes) ranks the same scores: Recall@1, Recall@2, MRR.
2. Generation (`generation`): for each (candidates, max_len) of SHAPES, replies sampled for the first
   `--limit` cases with the chat's sampling; every candidate gets every score, and each ranking of
   RANKINGS chooses among the very same candidates: share cut at the cap, repeating a 3-gram, empty,
   Distinct-2, char F1, mean length; the chosen replies of `--show` cases are written for reading.

    nice -n 10 .venv/bin/python bench/ranking_sweep.py --data ../shared/corpora/open/cped_valid.jsonl \\
        --limit 300 --output runs/ranking_sweep

Writes OUTPUT/coherence.json, OUTPUT/generation.json, OUTPUT/replies.md; prints the tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chitchat.corpus.readers import ReadStats  # noqa: E402
from chitchat.engine.engine import Engine  # noqa: E402
from chitchat.engine.ranking import Ranking, choose, parse_ranking  # noqa: E402
from chitchat.engine.replies import Candidate  # noqa: E402
from chitchat.eval.cases import EvalConfig, cases_from, read_dialogues  # noqa: E402
from chitchat.eval.coherence import draw_negatives  # noqa: E402
from chitchat.eval.metrics import char_f1, chars, distinct, repeats_3gram  # noqa: E402
from chitchat.engine.scoring import Group  # noqa: E402
from chitchat.engine.settings import ReplySettings  # noqa: E402
from chitchat.eval.cases import eval_settings  # noqa: E402
from chitchat.eval.ranking import mean, rank_of_true  # noqa: E402
from chitchat.eval.scoring import score_sets  # noqa: E402

RANKINGS = ["likelihood", "mmi", "pmi", "mmi+0.5*pmi", "mmi+pmi", "mmi+2*pmi", "mmi+0.5*likelihood"]
MIX_WEIGHTS = [0, 0.25, 0.5, 1, 2, 4]  # the coherence grid: mmi + a*pmi + b*likelihood
SHAPES = [(5, 25), (5, 40), (10, 40)]  # (candidates, max_len) of the generation part
ALL_SCORES = Ranking(((1.0, "mmi"), (1.0, "pmi")))  # needs every score


def mmi_only_scores(engine: Engine, sets: list[tuple[list[str], list[str]]], chunk: int) -> list[list]:
    """`score_sets` for rankings by MMI alone: only the MMI model runs (a third of the work)."""
    cap = engine.n_positions // 2
    out = []
    for i in range(0, len(sets), chunk):
        groups = []
        for context, replies in sets[i:i + chunk]:
            ids = [engine.encode(r)[:cap] for r in replies]
            history = engine.fit_history([engine.encode(u) for u in context], max(map(len, ids), default=0))
            groups.append(Group(history, [Candidate(r, x, "given") for r, x in zip(replies, ids)]))
        engine.score(groups, ["mmi"])
        out += [g.candidates for g in groups]
    return out


def coherence_part(engine: Engine, data: list[str], negatives: int, seed: int, limit: int | None,
                   chunk: int, mmi_only: bool = False) -> dict:
    stats = ReadStats()
    cfg = EvalConfig(models=[], output=Path("."), data=data, limit=limit, settings=replace(eval_settings(), seed=seed))
    dialogues, sources = read_dialogues(cfg, stats)
    cases = cases_from(dialogues, sources, cfg, stats)
    negs = draw_negatives(dialogues, cases, negatives, seed)
    started = time.perf_counter()
    sets = [(c.context, [c.reference, *n]) for c, n in zip(cases, negs)]
    scored = mmi_only_scores(engine, sets, chunk) if mmi_only else score_sets(engine, sets, ["likelihood", "mmi", "pmi"], chunk)
    seconds = time.perf_counter() - started
    mixes = [Ranking(tuple((w, n) for w, n in ((1.0, "mmi"), (a, "pmi"), (b, "likelihood")) if w))
             for a, b in itertools.product(MIX_WEIGHTS, MIX_WEIGHTS)]
    mixes += [Ranking(((1.0, "pmi"), (b, "likelihood"))) for b in MIX_WEIGHTS[1:]]
    rankings = ["mmi"] if mmi_only else list(dict.fromkeys(RANKINGS + [str(m) for m in mixes]))
    rows = {}
    for text in rankings:
        r = parse_ranking(text)
        ranks = [rank_of_true([r.score(s) for s in set_scores], 0) for set_scores in scored]
        rows[text] = {"recall_at_1": mean([float(x <= 1) for x in ranks]),
                      "recall_at_2": mean([float(x <= 2) for x in ranks]), "mrr": mean([1 / x for x in ranks])}
    return {"cases": len(cases), "negatives": negatives, "seed": seed, "seconds": seconds, "rankings": rows}


def generation_part(engine: Engine, data: list[str], seed: int, limit: int, batch: int, show: int,
                    sampling: ReplySettings, shapes=tuple(SHAPES)) -> tuple[dict, list[dict]]:
    stats = ReadStats()
    cfg = EvalConfig(models=[], output=Path("."), data=data, limit=limit, settings=replace(eval_settings(), seed=seed))
    dialogues, sources = read_dialogues(cfg, stats)
    cases = cases_from(dialogues, sources, cfg, stats)
    refs = [c.reference for c in cases]
    rows, shown = {}, [{"context": c.context, "reference": c.reference, "replies": {}} for c in cases[:show]]
    for n, max_len in shapes:
        cfg_s = replace(sampling, candidates=n, max_len=max_len, ranking=str(ALL_SCORES))
        started = time.perf_counter()
        replies = []
        for i in range(0, len(cases), batch):
            replies += engine.replies([c.context for c in cases[i:i + batch]], replace(cfg_s, seed=seed + i))
        seconds = time.perf_counter() - started
        for text in RANKINGS:
            picked = [r.candidates[choose(r.candidates, text)[0]] for r in replies]
            hyps = [c.text for c in picked]
            name = f"{text} c{n} L{max_len}"
            rows[name] = {
                "ranking": text, "candidates": n, "max_len": max_len, "cases": len(cases),
                "cut_rate": mean([float(not c.finished) for c in picked]),
                "all_cut_rate": mean([float(not any(c.finished for c in r.candidates if not c.empty)) for r in replies]),
                "repeat_3gram_rate": mean([float(repeats_3gram(h)) for h in hyps]),
                "empty_rate": mean([float(not chars(h)) for h in hyps]),
                "distinct2_char": distinct(hyps, 2, "char"),
                "f1_char": mean([char_f1(h, r) for h, r in zip(hyps, refs)]),
                "avg_len_chars": mean([len(chars(h)) for h in hyps]), "seconds": seconds,
            }
            for k, h in enumerate(hyps[:show]):
                shown[k]["replies"][name] = h
    return rows, shown


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models/default/dialogue"))
    p.add_argument("--mmi-model", default=str(ROOT / "models/default/mmi"))
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--negatives", type=int, default=9)
    p.add_argument("--coherence-limit", type=int, default=None, help="coherence cases at most (default: all)")
    p.add_argument("--limit", type=int, default=300, help="generation cases (the same for every row)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--show", type=int, default=40, help="cases whose replies go to replies.md")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--parts", default="coherence,generation")
    p.add_argument("--mmi-only", action="store_true", help="coherence of the MMI ranking alone (only that model runs)")
    p.add_argument("--shapes", default=",".join(f"{n}x{m}" for n, m in SHAPES),
                   help="generation shapes, CANDIDATESxMAX_LEN, comma-separated")
    args = p.parse_args(argv)
    engine = Engine.load(args.model, args.mmi_model, threads=args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    if "coherence" in parts:
        coh = coherence_part(engine, args.data, args.negatives, args.seed, args.coherence_limit, args.batch_size,
                             args.mmi_only)
        (args.output / "coherence.json").write_text(json.dumps(coh, indent=1) + "\n")
        print(f"coherence: {coh['cases']} cases, {args.negatives} distractors, seed {args.seed}")
        print("| ranking | R@1 | R@2 | MRR |\n| --- | ---: | ---: | ---: |")
        for name, r in sorted(coh["rankings"].items(), key=lambda kv: -kv[1]["recall_at_1"]):
            print(f"| `{name}` | {r['recall_at_1']:.3f} | {r['recall_at_2']:.3f} | {r['mrr']:.3f} |")
    if "generation" in parts:
        rows, shown = generation_part(engine, args.data, args.seed, args.limit, args.batch_size, args.show,
                                      ReplySettings(),
                                      [tuple(map(int, x.split("x"))) for x in args.shapes.split(",")])
        (args.output / "generation.json").write_text(json.dumps(rows, indent=1) + "\n")
        print("| ranking | candidates | max_len | cut | all cut | 3-gram repeat | empty | Distinct-2 | F1 | chars |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows.values():
            print(f"| `{r['ranking']}` | {r['candidates']} | {r['max_len']} | {r['cut_rate']:.1%} | {r['all_cut_rate']:.1%} "
                  f"| {r['repeat_3gram_rate']:.1%} | {r['empty_rate']:.1%} | {r['distinct2_char']:.3f} "
                  f"| {r['f1_char']:.3f} | {r['avg_len_chars']:.1f} |")
        with open(args.output / "replies.md", "w", encoding="utf-8") as f:
            for k, case in enumerate(shown):
                f.write(f"## case {k}\ncontext: {' / '.join(case['context'])}\nreference: {case['reference']}\n")
                for name, h in case["replies"].items():
                    f.write(f"- {name}: {h}\n")
                f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
