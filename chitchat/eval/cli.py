"""`chitchat eval`: the command line over `chitchat.eval.evaluate.evaluate`."""

from __future__ import annotations

import sys

from chitchat.engine.options import (add_engine_arguments, add_ranking_arguments, add_sampling_arguments,
                                     engine_options_from_args, ranking_from_args, sampling_from_args)
from chitchat.errors import ChitchatError
from chitchat.eval.cases import EvalConfig
from chitchat.eval.evaluate import evaluate
from chitchat.eval.report import tables
from chitchat.model.default import ensure_default_model
from chitchat.options import add_options, options_from_args


def add_arguments(p) -> None:
    add_engine_arguments(p, skip=("no_mmi",), several_models=True)
    add_options(p, EvalConfig)
    add_sampling_arguments(p)
    add_ranking_arguments(p)


def run(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise ChitchatError("--limit must be at least 1")
    if args.batch_size < 1:
        raise ChitchatError("--batch-size must be at least 1")
    engine = engine_options_from_args(args)
    models, mmi_model = args.model, engine.mmi_model
    if not models:
        dialogue, default_mmi = ensure_default_model(say=lambda text: print(text, file=sys.stderr))
        models, mmi_model = [dialogue], mmi_model or default_mmi
    cfg = options_from_args(EvalConfig, args, models=models, mmi_model=mmi_model, sampling=sampling_from_args(args),
                            ranking=ranking_from_args(args),
                            int8=engine.int8, device=engine.device, threads=engine.threads)
    report, timing = evaluate(cfg)
    skipped = report["skipped"]
    if cfg.data:
        print(f"{report['cases']} test cases; skipped dialogues: {skipped['dialogues'] or 'none'}; "
              f"skipped cases: {skipped['cases'] or 'none'}")
    print(tables(report))
    for name, rate in timing.items():
        print(f"{name}: {rate:.1f} cases/s")
    print(f"wrote {cfg.output}/report.md, report.json, cases.jsonl")
    return 0
