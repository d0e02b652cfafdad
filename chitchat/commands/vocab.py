"""Build the character vocabulary deterministically: special tokens, the space, ASCII, the
characters of the given corpora, then the most frequent characters of jieba's dictionary.

`chitchat vocab`: the command line over `chitchat.tokens.vocab.build_vocab_file`.
"""

from __future__ import annotations

from chitchat.options import add_options, options_from_args
from chitchat.tokens.vocab import VocabConfig, build_vocab_file


def add_arguments(p) -> None:
    add_options(p, VocabConfig)


def run(args) -> int:
    print(build_vocab_file(options_from_args(VocabConfig, args)))
    return 0
