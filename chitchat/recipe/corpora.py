"""The corpora the recipe trains and validates on: where each lies under --corpora, where it comes from
and its licence (recorded in TRAINED_ON.json and the model card).

A `Corpus` is a named corpus with its provenance, not a file to read: its path is a file or folder that
the corpus readers expand into `chitchat.corpus.sources.Source`s like any input of `chitchat preprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chitchat.corpus.readers import chatterbot_files
from chitchat.errors import ChitchatError


@dataclass(frozen=True)
class Corpus:
    path: str     # relative to RecipeConfig.corpora, or `chatterbot:LANG`
    origin: str   # where it comes from: repository, commit, path
    licence: str


# The open corpora of ../shared/corpora (see its README). LCCC is research-only: never here.
SMILE = Corpus("open/smile_20k.jsonl", "qiuhuachuan/smile @ 9f8afc0, data/ (20,000 of 55,165 dialogues, fixed seed)",
               "CC0-1.0")
CPED_TRAIN = Corpus("open/cped_train.jsonl", "scutcyr/CPED @ 1e4b81c, data/CPED/test_split.csv", "Apache-2.0")
CPED_VALID = Corpus("open/cped_valid.jsonl", "scutcyr/CPED @ 1e4b81c, data/CPED/valid_split.csv", "Apache-2.0")
XPERSONA = Corpus("open/xpersona_zh_train.jsonl", "HLTCHKUST/Xpersona @ 1da049a, dataset/Zh_persona_split_valid_human_annotated.json",
                  "MIT")
KDCONV = Corpus("kdconv", "thu-coai/KdConv, data/{film,music,travel}/dev.json", "Apache-2.0")
CHATTERBOT = Corpus("chatterbot:chinese", "PyPI chatterbot-corpus (gunthercox/chatterbot-corpus), chatterbot_corpus/data/chinese/*.yml", "BSD-3-Clause")


def corpus_files(root: Path, corpus: Corpus) -> list[Path]:
    """The files of one corpus under `root`; a missing one is a one-line error naming it and its origin."""
    if corpus.path.startswith("chatterbot:"):
        return chatterbot_files(corpus.path)
    path = Path(root) / corpus.path
    if not path.exists():
        raise ChitchatError(f"missing corpus {path}: it comes from {corpus.origin} ({corpus.licence}); "
                            f"see ../shared/corpora/README.md, or point --corpora at the folder holding it")
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def corpus_inputs(root: Path, corpora) -> list[str]:
    """The corpora as inputs of `chitchat preprocess` / `chitchat vocab` / `chitchat eval --data`."""
    return [c.path if c.path.startswith("chatterbot:") else str(Path(root) / c.path) for c in corpora]
