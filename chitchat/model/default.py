"""The default model: what `chitchat chat`, `chitchat serve` and `chitchat eval` use when no model is given.

It lives in `models/default/` of the checkout ($CHITCHAT_DEFAULT_MODEL overrides; outside a checkout,
in the user data directory) as `dialogue/` and `mmi/`, with `TRAINED_ON.json` and a model card. The
repository ships it, built by the recipe (`chitchat default-model`). A missing model is an error that
says how to get one: nothing here downloads, trains or touches git (restoring the checkout's copy,
`git checkout HEAD -- models/default`, would discard local edits there: the user runs it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from chitchat.errors import ChitchatError
from chitchat.files import REPO_ROOT, user_data_dir

MANIFEST = "TRAINED_ON.json"  # the recipe's record of how the default model was built
CHECKOUT_MODEL = REPO_ROOT / "models" / "default"


def default_model_dir() -> Path:
    if os.environ.get("CHITCHAT_DEFAULT_MODEL"):
        return Path(os.environ["CHITCHAT_DEFAULT_MODEL"])
    if (REPO_ROOT / "pyproject.toml").is_file():  # a checkout
        return CHECKOUT_MODEL
    return user_data_dir() / "models" / "default"


def _ready(root: Path) -> bool:
    return all((root / name / "config.json").is_file() for name in ("dialogue", "mmi"))


def ensure_default_model(say: Callable[[str], None] = print, root: Path | None = None) -> tuple[str, str]:
    """(dialogue model dir, MMI model dir) of the default model; a one-line ChitchatError saying how to get
    it when it is missing. `say` is not called any more (nothing is restored): kept for the callers."""
    root = Path(root) if root is not None else default_model_dir()
    if not _ready(root):
        raise ChitchatError(
            f"no default model in {root}: in a checkout run `git checkout HEAD -- models/default`; elsewhere "
            "pass --model DIR, set CHITCHAT_DEFAULT_MODEL, or build it with `chitchat default-model --corpora DIR` "
            "(the open corpora; hours on a CPU)")
    return str(root / "dialogue"), str(root / "mmi")
