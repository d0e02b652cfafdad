"""Rebuild the shipped default model from open corpora, resuming where a stopped run stopped.

`chitchat default-model` (`make default-model`): the command line over
`chitchat.recipe.recipe.run_recipe`, whose docstring lists the stages.
"""

from __future__ import annotations

from chitchat.options import add_options, options_from_args
from chitchat.recipe.recipe import STAGES, RecipeConfig, run_recipe


def add_arguments(p) -> None:
    add_options(p, RecipeConfig)
    p.add_argument("--until", choices=STAGES, help="stop after this stage: preprocess (to train on another machine), "
                   "train, export or eval")


def run(args) -> int:
    cfg = options_from_args(RecipeConfig, args)
    run_recipe(cfg, say=lambda text: print(text, flush=True), until=args.until)
    return 0
