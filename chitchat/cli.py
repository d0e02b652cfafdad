"""The `chitchat` command line: one subcommand per stage, each module owning its options."""

from __future__ import annotations

import argparse
import importlib
import sys

from chitchat import __version__
from chitchat.errors import ChitchatError
from chitchat.options import command_parser

# subcommand -> (module, one-line help); modules are imported only when their command runs.
COMMANDS = {
    "preprocess": ("chitchat.tokens.preprocess", "turn dialogue corpora into token windows for training"),
    "vocab": ("chitchat.tokens.vocab", "build the character vocabulary (vocab.txt)"),
    "chat": ("chitchat.chat.repl", "chat in the terminal (with the shipped default model unless --model)"),
    "train": ("chitchat.training.cli", "train the GPT-2 dialogue model (or with --mmi the MMI model) on a dataset"),
    "eval": ("chitchat.eval.cli", "score models on dialogues (perplexity, BLEU, distinct-n, coherence) and response selection"),
    "serve": ("chitchat.serve.command", "serve the bot over HTTP (FastAPI on uvicorn), with a chat page at /"),
    "default-model": ("chitchat.recipe.recipe", "rebuild the shipped default model from open corpora (the recipe)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of `only` (a command imports its module alone: `chitchat train`
    needs neither the server's nor the terminal's libraries)."""
    parser = argparse.ArgumentParser(
        prog="chitchat",
        description="Multi-turn Chinese chitchat: preprocess corpora, train GPT-2 dialogue and MMI models, chat, evaluate, serve.",
    )
    parser.add_argument("--version", action="version", version=f"chitchat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        if only is not None and name != only:
            continue
        command_parser(name, importlib.import_module(module), sub, help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except ChitchatError as e:
        print(f"chitchat {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"chitchat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
