"""Options shared by `chitchat chat`, `chitchat eval` and `chitchat serve`, each defined once: the engine
flags (EngineOptions: which models, on which device) and the reply settings' flags (ReplySettings'
fields, chitchat.engine.settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from chitchat.engine.engine import Engine
from chitchat.engine.settings import ReplySettings
from chitchat.errors import ChitchatError
from chitchat.model.default import ensure_default_model
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
    index: str | None = option(None, metavar="DIR", help="response index for retrieved candidates (--retrieved); "
                               "none: the index/ beside the model's directory, when there")
    no_index: bool = option(False, help="load no response index: every candidate is sampled")
    selector: str | None = option(None, metavar="FILE", help="trained selector (the ranking's `selector` "
                                  "scoring); none: selector.json beside the model's directory, when there")

    def validate(self) -> "EngineOptions":
        if self.threads is not None and self.threads < 1:
            raise ChitchatError("--threads must be >= 1")
        return self


def add_engine_arguments(p, *, defaults: dict | None = None, skip: tuple[str, ...] = ()) -> None:
    """The engine flags, in a "model" group."""
    add_options(p, EngineOptions, group="model", defaults=defaults, skip=skip)


def add_model_argument(p, several: bool = False) -> None:
    """--model alone, in the "model" group; `several`: it may be repeated (args.model is then a list,
    None when absent), to compare models side by side."""
    group = next((g for g in p._action_groups if g.title == "model"), None) or p.add_argument_group("model")
    meta = EngineOptions.__dataclass_fields__["model"].metadata["chitchat.option"]
    group.add_argument("--model", action="append" if several else "store", metavar="DIR",
                       help=meta["help"].replace("; none:", " (repeat to compare models side by side); none:"))


def engine_options_from_args(args) -> EngineOptions:
    return options_from_args(EngineOptions, args).validate()


def add_settings_arguments(p, defaults: dict | None = None) -> None:
    """Every reply setting as a flag (ReplySettings' fields), in a "reply settings" group."""
    add_options(p, ReplySettings, group="reply settings", defaults=defaults)


def settings_from_args(args) -> ReplySettings:
    """The reply settings of the flags, validated: a bad value is a one-line ChitchatError."""
    return options_from_args(ReplySettings, args).validate()


def load_engine(opts: EngineOptions, say: Callable[[str], None]) -> Engine:
    """The engine `opts` names: the shipped default model (and its MMI model) unless --model."""
    model, mmi = opts.model, None if opts.no_mmi else opts.mmi_model
    if model is None:
        model, default_mmi = ensure_default_model(say=say)
        if not opts.no_mmi and mmi is None:
            mmi = default_mmi
    return Engine.load(model, mmi, int8=opts.int8, device=opts.device, threads=opts.threads,
                       index_dir=index_dir(opts, model), selector=selector_file(opts, model))


def selector_file(opts: EngineOptions, model: str) -> Path | None:
    """The selector `opts` names, else the `selector.json` beside the model's directory, else None."""
    if opts.selector is not None:
        return Path(opts.selector)
    near = Path(model).parent / "selector.json"
    return near if near.is_file() else None


def index_dir(opts: EngineOptions, model: str) -> Path | None:
    """The response index `opts` names, else the `index/` beside the model's directory (as
    models/default/ holds dialogue/, mmi/ and index/), else None."""
    if opts.no_index:
        return None
    if opts.index is not None:
        return Path(opts.index)
    near = Path(model).parent / "index"
    return near if (near / "meta.json").is_file() else None
