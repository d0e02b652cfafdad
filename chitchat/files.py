"""Where things live and how files are written: the checkout root, the user data directory,
one atomic-write helper (write beside, then rename over), a file's SHA-256."""

from __future__ import annotations

import hashlib
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout (pyproject.toml, vocab/, models/)


def user_data_dir() -> Path:
    """Where the input history and transcripts go: $CHITCHAT_HOME, else the platform's user data dir."""
    if os.environ.get("CHITCHAT_HOME"):
        return Path(os.environ["CHITCHAT_HOME"])
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "chitchat"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "chitchat"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "chitchat"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on success it replaces `path` in one rename (a
    reader sees the old file or the new one, never half of one); on an error it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
