"""The `chitchat` command line: one subcommand per stage, each module owning its options."""

from __future__ import annotations

import argparse
import sys

from chitchat import __version__
from chitchat.errors import ChitchatError
from chitchat.options import command_parser

# subcommand -> (loader of its module, one-line help). Each loader imports its command's module alone,
# when that command runs: `chitchat train` needs neither the server's nor the terminal's libraries.


def _preprocess():
    from chitchat.commands import preprocess
    return preprocess


def _vocab():
    from chitchat.commands import vocab
    return vocab


def _chat():
    from chitchat.commands import chat
    return chat


def _train():
    from chitchat.commands import train
    return train


def _eval():
    from chitchat.commands import eval
    return eval


def _serve():
    from chitchat.commands import serve
    return serve


def _judge():
    from chitchat.commands import judge
    return judge


def _index():
    from chitchat.commands import index
    return index


def _default_model():
    from chitchat.commands import default_model
    return default_model


def _selector():
    from chitchat.commands import selector
    return selector


COMMANDS = {
    "preprocess": (_preprocess, "turn dialogue corpora into token windows for training"),
    "vocab": (_vocab, "build the character vocabulary (vocab.txt)"),
    "chat": (_chat, "chat in the terminal (with the shipped default model unless --model)"),
    "train": (_train, "train the GPT-2 dialogue model (or with --mmi the MMI model) on a dataset"),
    "eval": (_eval, "score models on dialogues (perplexity, BLEU, distinct-n, coherence) and response selection"),
    "judge": (_judge, "blind judging sheets of replies, and their judgments as sensibleness, specificity and SSA"),
    "serve": (_serve, "serve the bot over HTTP (FastAPI on uvicorn), with a chat page at /"),
    "index": (_index, "build a retrieval index of (context, reply) pairs from dialogue corpora (reply candidates)"),
    "default-model": (_default_model, "rebuild the shipped default model from open corpora (the recipe)"),
    "selector": (_selector, "train the learned selector that ranks candidate replies (a scoring)"),
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
    for name, (load, help_) in COMMANDS.items():
        if only is not None and name != only:
            continue
        command_parser(name, load(), sub, help_)
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
