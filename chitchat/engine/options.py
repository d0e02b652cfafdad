"""Options shared by `chitchat chat`, `chitchat eval` and `chitchat serve`, each defined once: the engine
flags (EngineOptions: which models, on which device), the sampling flags (SamplingConfig's fields) and
the ranking flag (RankingOptions)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from chitchat.engine.engine import Engine
from chitchat.engine.ranking import DEFAULT_RANKING, SYNTAX, parse_ranking
from chitchat.errors import ChitchatError
from chitchat.model.default import ensure_default_model
from chitchat.model.sampling import SamplingConfig
from chitchat.options import add_options, option, options_from_args


@dataclass
class EngineOptions:
    """Which models the engine loads, and where it runs them."""

    model: str | None = option(None, metavar="DIR", help="dialogue model or training run directory; "
                               "none: the shipped default model (models/default)")
    mmi_model: str | None = option(None, metavar="DIR",
                                   help="MMI model for reranking; with no --model, the default MMI model")
    no_mmi: bool = option(False, help="do not load an MMI model: rank by the dialogue model's likelihood")
    device: str = option("cpu", help="cpu or cuda[:N]")
    threads: int | None = option(None, metavar="N", help="CPU threads the engine uses (none: torch's default, "
                                 "one per core; 1 suits a CPU shared with other work)")
    int8: bool = option(False, help="int8 weights for the linear and output layers (CPU)")

    def validate(self) -> "EngineOptions":
        if self.threads is not None and self.threads < 1:
            raise ChitchatError("--threads must be >= 1")
        return self


@dataclass
class RankingOptions:
    """How the sampled candidates are ranked (chitchat.engine.ranking)."""

    ranking: str = option(DEFAULT_RANKING, metavar="SPEC",
                          help=f"how candidates are ranked, lower is better: {SYNTAX} "
                               f"(default {DEFAULT_RANKING}; with no MMI model its MMI term is left out)")


def add_ranking_arguments(p) -> None:
    add_options(p, RankingOptions, group="sampling")


def ranking_from_args(args) -> str:
    """The --ranking flag, checked and written canonically; a bad one is a one-line ChitchatError."""
    return str(parse_ranking(options_from_args(RankingOptions, args).ranking))


def add_engine_arguments(p, *, defaults: dict | None = None, skip: tuple[str, ...] = (),
                         several_models: bool = False) -> None:
    """The engine flags, in a "model" group; `several_models`: --model may be repeated (args.model is then
    a list, None when absent)."""
    add_options(p, EngineOptions, group="model", defaults=defaults,
                skip=skip + (("model",) if several_models else ()))
    if several_models:
        group = next(g for g in p._action_groups if g.title == "model")
        meta = EngineOptions.__dataclass_fields__["model"].metadata["chitchat.option"]
        group.add_argument("--model", action="append", metavar="DIR",
                           help=meta["help"].replace("; none:", " (repeat to compare models side by side); none:"))


def engine_options_from_args(args) -> EngineOptions:
    return options_from_args(EngineOptions, argparse.Namespace(
        **{k: v for k, v in vars(args).items() if k != "model" or not isinstance(v, list)})).validate()


def add_sampling_arguments(p) -> None:
    add_options(p, SamplingConfig, group="sampling")


def sampling_from_args(args) -> SamplingConfig:
    return options_from_args(SamplingConfig, args).validate()


def load_engine(args, say: Callable[[str], None]) -> Engine:
    opts = engine_options_from_args(args)
    model, mmi = opts.model, None if opts.no_mmi else opts.mmi_model
    if model is None:
        model, default_mmi = ensure_default_model(say=say)
        if not opts.no_mmi and mmi is None:
            mmi = default_mmi
    return Engine.load(model, mmi, int8=opts.int8, device=opts.device, threads=opts.threads)
