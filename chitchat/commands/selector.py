"""`chitchat selector`: train the learned selector on dialogues a response index held out
(chitchat.recipe.selector), and write it as JSON beside the model (selector.json)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from chitchat.engine.options import EngineOptions, load_engine
from chitchat.options import add_options, option, options_from_args
from chitchat.recipe.selector import SelectorConfig, train_selector


@dataclass
class SelectorCommand:
    engine: EngineOptions = option(help="the models and the index the selector is trained with", group="model",
                                   default_factory=lambda: EngineOptions(threads=None))
    train: SelectorConfig = option(help="what the selector learns from", group="training",
                                   default_factory=SelectorConfig)


def add_arguments(p) -> None:
    add_options(p, SelectorCommand, skip=("engine.no_mmi", "engine.no_index", "engine.selector"))


def run(args) -> int:
    cmd = options_from_args(SelectorCommand, args)
    engine = load_engine(cmd.engine.validate(), lambda text: print(text, file=sys.stderr))
    train_selector(engine, cmd.train, say=lambda text: print(text, file=sys.stderr))
    return 0
