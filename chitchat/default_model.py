"""The default model: what `chitchat chat` (and `make chat`) uses when no model is given.

It lives in `models/default/` of the checkout (git-ignored; $CHITCHAT_DEFAULT_MODEL overrides, and
outside a checkout it goes to the user data directory) as `dialogue/` and `mmi/`. When it is missing
it is trained on the spot, on this machine's CPU in about two and a half minutes: the Chinese files
that the `chatterbot-corpus` package ships (a few hundred short question/answer exchanges) plus
the samples in `corpus/`, preprocessed with `chitchat.preprocess`, then a `tiny` dialogue model
and a `tiny` MMI model, each trained by `chitchat.train` for a fixed time. It is a demonstration
model, small and trained on little data: it gets the format right and echoes its corpus, no more.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from chitchat.errors import ChitchatError

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = REPO_ROOT / "corpus"
PRESET = "tiny"
SECONDS = {"dialogue": 85, "mmi": 45}  # training time of each model: the dialogue model writes the replies
MAX_LEN = 128  # tokens per training window: chatterbot exchanges are short
MANIFEST = "TRAINED_ON.json"


def default_model_dir() -> Path:
    if os.environ.get("CHITCHAT_DEFAULT_MODEL"):
        return Path(os.environ["CHITCHAT_DEFAULT_MODEL"])
    if (REPO_ROOT / "pyproject.toml").is_file():  # a checkout
        return REPO_ROOT / "models" / "default"
    from chitchat.session import user_data_dir

    return user_data_dir() / "models" / "default"


def _ready(root: Path) -> bool:
    return all((root / name / "config.json").is_file() for name in ("dialogue", "mmi"))


def ensure_default_model(say: Callable[[str], None] = print, progress: bool | None = None,
                         seconds: dict[str, float] | None = None, root: Path | None = None) -> tuple[str, str]:
    """(dialogue model dir, MMI model dir) of the default model, trained first when missing."""
    root = Path(root) if root is not None else default_model_dir()
    seconds = {**SECONDS, **(seconds or {})}
    if _ready(root):
        return str(root / "dialogue"), str(root / "mmi")
    try:
        from chitchat.preprocess import PreprocessConfig, preprocess
        from chitchat.train import TrainConfig, train
    except ImportError as e:
        raise ChitchatError(f"cannot train the default model: {e}") from None
    inputs = ["chatterbot:chinese"] + ([str(CORPUS_DIR)] if CORPUS_DIR.is_dir() else [])
    say(f"No default model in {root}: training one now (tiny preset, about {round(sum(seconds.values()) / 60 + 0.2, 1)} "
        f"minutes on a CPU) on {' + '.join(inputs)}.")
    root.parent.mkdir(parents=True, exist_ok=True)
    work = root.parent / f".{root.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    started = time.time()
    try:
        data = work / "data"
        summary = preprocess(PreprocessConfig(inputs=inputs, output=data, max_len=MAX_LEN, progress=progress))
        say(f"corpus: {summary.read.kept} dialogues, {summary.tokens} characters, {summary.windows} windows")
        results = {}
        for name, mmi in (("dialogue", False), ("mmi", True)):
            say(f"training the {'MMI' if mmi else 'dialogue'} model ({seconds[name]:.0f} s)")
            # one thread: on a shared 2-core CPU it made twice the steps of two in the same time
            best = train(TrainConfig(data=data, output=work / f"{name}-run", preset=PRESET, mmi=mmi, epochs=1000,
                                     lr=2e-3, time_limit=seconds[name], patience=None, progress=progress,
                                     verbose=False, num_threads=1))
            shutil.copytree(best, work / name)
            results[name] = str(best.relative_to(work))
        manifest = {
            "trained_on": inputs, "preset": PRESET, "max_len": MAX_LEN, "training_seconds": seconds,
            "dialogues": summary.read.kept, "characters": summary.tokens, "windows": summary.windows,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "note": "demonstration model: see the README for training a real one on LCCC",
        }
        (work / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        for name in ("data", "dialogue-run", "mmi-run"):
            shutil.rmtree(work / name, ignore_errors=True)
        if _ready(root):  # another process finished first
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
            work.rename(root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"default model ready in {root} ({time.time() - started:.0f} s)")
    return str(root / "dialogue"), str(root / "mmi")
