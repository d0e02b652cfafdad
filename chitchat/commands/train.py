"""Fit a GPT-2 dialogue model on a preprocessed dataset (with --mmi: the reverse MMI model).

`chitchat train`, the command line over `chitchat.training.trainer.train`: the flags are TrainConfig's
fields (chitchat.training.config), plus --config JSON (GPT2Config fields overriding the preset) and
--quiet. With --resume, a flag not given keeps the run's own value (train_config.json), not the
default shown. What a run directory holds: chitchat.training.trainer.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from chitchat.model.gpt2 import read_config_override
from chitchat.options import add_options
from chitchat.training.config import KEPT_ON_RESUME, TrainConfig, config_from_json, read_run_config

_FIELDS = {f.name for f in fields(TrainConfig)}


class _Default:
    """A default as parsed arguments hold it: shown in --help like the value itself, and told apart
    from the same value given on the command line (a resumed run keeps its own value then)."""

    def __init__(self, value):
        self.value = value

    def __str__(self) -> str:
        return str(self.value)


def add_arguments(p) -> None:
    add_options(p, TrainConfig)
    for action in p._actions:
        if action.dest in _FIELDS and action.default is not None and action.default is not False:
            action.default = _Default(action.default)
    p.add_argument("--config", type=Path, metavar="JSON", help="GPT2Config fields overriding the preset")
    p.add_argument("--quiet", action="store_true", help="no evaluation lines and no summary")


def _given(args) -> dict:
    """The TrainConfig fields given on the command line (not given: a _Default, None or False)."""
    return {k: v for k, v in vars(args).items()
            if k in _FIELDS and v is not None and v is not False and not isinstance(v, _Default)}


def config_from_args(args) -> TrainConfig:
    """Options given on the command line; the rest from the run being resumed, else the defaults."""
    base: dict = {}
    if args.resume:
        saved = read_run_config(args.output)
        if saved is not None:
            base = {k: v for k, v in saved["config"].items() if k in KEPT_ON_RESUME}
    given = _given(args)
    if args.config is not None:
        given["model_config"] = read_config_override(args.config)
    if given.get("patience") == 0:
        given["patience"] = None
    merged = {**base, **given, "data": str(args.data), "output": str(args.output), "resume": bool(args.resume),
              "progress": args.progress, "verbose": not args.quiet}
    return config_from_json(merged)


def run(args) -> int:
    # torch and transformers load with the trainer, so that `chitchat train --help` answers at once
    from chitchat.training.trainer import train

    train(config_from_args(args))
    return 0
