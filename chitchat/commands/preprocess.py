"""Corpora -> normalised dialogues -> token windows -> a dataset directory, in one stream.

`chitchat preprocess`: the command line over `chitchat.tokens.preprocess.preprocess`.
"""

from __future__ import annotations

from dataclasses import fields

from chitchat.corpus.readers import RowColumns
from chitchat.errors import ChitchatError
from chitchat.options import add_options, options_from_args
from chitchat.tokens.preprocess import PreprocessConfig, preprocess

_SPLIT = ("valid_fraction", "valid_count")  # one or the other


def add_arguments(p) -> None:
    add_options(p, PreprocessConfig, skip=_SPLIT)
    add_options(p.add_mutually_exclusive_group(), PreprocessConfig,
                skip=tuple(f.name for f in fields(PreprocessConfig) if f.name not in _SPLIT))
    p.add_argument("--pair", nargs=2, action="append", metavar=("POSTS", "REPLIES"),
                   help="two line-aligned files read as one corpus (line i of each is one exchange); "
                        "X.post/X.response, X.src/X.tgt, X.source/X.target among the inputs are paired by name")
    p.add_argument("--id-column", metavar="NAME", help="dialogue-id column of one-utterance-per-row files "
                                       "(none: Dialogue_ID, dialog_id, conv_id, conversation_id or session_id)")
    p.add_argument("--text-column", metavar="NAME", help="text column of one-utterance-per-row files "
                                         "(none: Utterance, text, content or message)")
    p.add_argument("--speaker-column", metavar="NAME", help="speaker column of one-utterance-per-row files "
                                            "(none: Speaker, speaker_id, role or sender, if present)")
    p.add_argument("--mmi", action="store_true",
                   help="accepted for compatibility: the reversed (MMI) sequences are always written")


def run(args) -> int:
    cfg = options_from_args(
        PreprocessConfig, args, valid_fraction=None if args.valid_count is not None else args.valid_fraction,
        pairs=[tuple(p) for p in args.pair or ()], columns=RowColumns(args.id_column, args.text_column, args.speaker_column))
    if not cfg.inputs and not cfg.pairs:
        raise ChitchatError("no input: give corpus files or folders, or --pair POSTS REPLIES")
    summary = preprocess(cfg)
    print(summary.text())
    print(f"wrote {cfg.output}")
    return 0
