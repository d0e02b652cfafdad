"""The default model: what `chitchat chat`, `chitchat serve` and `make chat` use when no model is given.

It lives in `models/default/` of the checkout ($CHITCHAT_DEFAULT_MODEL overrides; outside a checkout it
goes to the user data directory) as `dialogue/` and `mmi/`, with `TRAINED_ON.json` and a model card.
The repository ships it, built by the recipe in chitchat/recipe.py (`make default-model`). When the
checkout's copy is missing, git restores the committed one; elsewhere the recipe rebuilds it from the
open corpora it names (minutes of training on a GPU, about 8 hours on a 2-core CPU).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Callable

from chitchat.recipe import MANIFEST, REPO_ROOT, RecipeConfig, run_recipe

__all__ = ["MANIFEST", "default_model_dir", "ensure_default_model"]


def default_model_dir() -> Path:
    if os.environ.get("CHITCHAT_DEFAULT_MODEL"):
        return Path(os.environ["CHITCHAT_DEFAULT_MODEL"])
    if (REPO_ROOT / "pyproject.toml").is_file():  # a checkout
        return REPO_ROOT / "models" / "default"
    from chitchat.session import user_data_dir

    return user_data_dir() / "models" / "default"


def _ready(root: Path) -> bool:
    return all((root / name / "config.json").is_file() for name in ("dialogue", "mmi"))


def _restore_committed(root: Path) -> bool:
    """Restore the checkout's committed models/default (git keeps it: no download, no training)."""
    if root.resolve() != (REPO_ROOT / "models" / "default").resolve() or not (REPO_ROOT / ".git").exists() \
            or shutil.which("git") is None:
        return False
    done = subprocess.run(["git", "-C", str(REPO_ROOT), "checkout", "HEAD", "--", "models/default"],
                          capture_output=True, text=True)
    return done.returncode == 0 and _ready(root)


def ensure_default_model(say: Callable[[str], None] = print, progress: bool | None = None,
                         root: Path | None = None, recipe: RecipeConfig | None = None) -> tuple[str, str]:
    """(dialogue model dir, MMI model dir) of the default model: restored from git when the checkout's
    copy is missing, else rebuilt by the recipe."""
    root = Path(root) if root is not None else default_model_dir()
    if not _ready(root) and _restore_committed(root):
        say(f"No default model in {root}: restored the committed one (git checkout HEAD -- models/default).")
    if not _ready(root):
        say(f"No default model in {root}: rebuilding it with its recipe (`make default-model`; minutes of "
            "training on a GPU, about 8 hours on a 2-core CPU; a stopped run resumes where it stopped).")
        cfg = replace(recipe or RecipeConfig(), output=root, progress=progress)
        run_recipe(cfg, say=say)
    return str(root / "dialogue"), str(root / "mmi")
