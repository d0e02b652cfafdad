"""`chitchat eval`: score models on dialogues and on response selection (chitchat.eval.evaluate)."""

from __future__ import annotations

import sys
from dataclasses import replace

from chitchat.engine.options import add_model_argument
from chitchat.errors import ChitchatError
from chitchat.eval.cases import DEFAULT_SEED, EvalConfig
from chitchat.eval.evaluate import evaluate
from chitchat.eval.report import tables
from chitchat.model.default import ensure_default_model
from chitchat.options import add_options, options_from_args


def add_arguments(p) -> None:
    add_model_argument(p, several=True)
    add_options(p, EvalConfig, skip=("engine.model", "engine.no_mmi"), defaults={"settings": {"seed": DEFAULT_SEED}})


def run(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise ChitchatError("--limit must be at least 1")
    if args.batch_size < 1:
        raise ChitchatError("--batch-size must be at least 1")
    cfg = options_from_args(EvalConfig, args, models=args.model or [])
    cfg.engine = replace(cfg.engine, model=None)  # --model is the list above
    cfg.settings = cfg.settings.validate()
    if not cfg.models:
        dialogue, default_mmi = ensure_default_model(say=lambda text: print(text, file=sys.stderr))
        cfg.models, cfg.engine = [dialogue], replace(cfg.engine, mmi_model=cfg.engine.mmi_model or default_mmi)
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
