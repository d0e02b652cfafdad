"""Checkpoints that survive `kill -9`: complete directories written aside and swapped into place.

A checkpoint directory (`last/`, `best/`) is a Hugging Face model directory; `last/` adds the
training state:

    training_state.json   step, epoch, position in the epoch, best loss, counters (plain JSON)
    training_state.pt     optimiser state dict (tensors and numbers only; loaded weights_only)
    rng_state_<rank>.pt   each rank's torch RNG states (CPU and CUDA), taken at the step boundary

Writing goes to `.<name>.partial` (in DDP every rank adds its RNG state there); every file is
fsynced, the directory is renamed to `.<name>.new` (so a `.new` is always complete), and then
exchanged with `<name>` in one atomic `renameat2(RENAME_EXCHANGE)` (Linux); the old copy, now at
`.new`, is deleted. Where the exchange is unavailable, `<name>` is renamed to `.<name>.old` and
`.new` to `<name>`. Whatever instant a process dies at, `recover_dir` finds a complete
checkpoint: `<name>` itself, else `.new`, else `.old`; partial directories are discarded.
`--resume` runs it before reading `last/`.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
from pathlib import Path

import torch

from chitchat.errors import ChitchatError

STATE_JSON = "training_state.json"
STATE_PT = "training_state.pt"
STATE_VERSION = 1


def _aside(dest: Path, kind: str) -> Path:
    return dest.parent / f".{dest.name}.{kind}"


def new_partial_dir(dest: Path) -> Path:
    dest = Path(dest)
    tmp = _aside(dest, "partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _promote(tmp: Path, dest: Path) -> None:
    """`tmp` (complete) becomes `dest`; the previous `dest` is removed.

    Not chitchat.files.atomic_path: that replaces one file by a rename, but a rename cannot replace a
    non-empty directory, and a checkpoint is a directory whose files must change together; hence the
    exchange, and the `.new`/`.old` names that `recover_dir` understands after a crash."""
    new, old = _aside(dest, "new"), _aside(dest, "old")
    for stale in (new, old):
        if stale.exists():
            shutil.rmtree(stale)
    os.rename(tmp, new)
    _fsync_dir(dest.parent)
    if not dest.exists():
        os.rename(new, dest)
    elif _exchange(new, dest):
        shutil.rmtree(new)
    else:
        os.rename(dest, old)
        os.rename(new, dest)
        shutil.rmtree(old)
    _fsync_dir(dest.parent)


def commit_dir(tmp: Path, dest: Path) -> None:
    """Make the fully written `tmp` the new `dest`, atomically."""
    _fsync_tree(tmp)
    _promote(Path(tmp), Path(dest))


def recover_dir(dest: Path) -> None:
    """Repair what an interrupted `commit_dir` left: after it, `dest` is the newest complete
    copy (if any existed) and no temporary directories remain."""
    dest = Path(dest)
    new, old = _aside(dest, "new"), _aside(dest, "old")
    if not dest.exists():
        for candidate in (new, old):
            if candidate.is_dir():
                os.rename(candidate, dest)
                break
    for stale in (new, old, _aside(dest, "partial")):
        if stale.exists():
            shutil.rmtree(stale, ignore_errors=True)


def save_training_state(path: Path, state: dict, optimizer_state: dict) -> None:
    torch.save({"optimizer": optimizer_state}, path / STATE_PT)
    (path / STATE_JSON).write_text(json.dumps({"version": STATE_VERSION, **state}, indent=2), encoding="utf-8")


def save_rng_state(path: Path, rank: int, rng: dict) -> None:
    torch.save(rng, path / f"rng_state_{rank}.pt")


def capture_rng() -> dict:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def read_training_state(path: Path) -> dict:
    """The JSON part of a checkpoint's training state; ChitchatError if missing or corrupt."""
    f = Path(path) / STATE_JSON
    if not f.is_file():
        raise ChitchatError(f"{path}: not a training checkpoint (no {STATE_JSON})")
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ChitchatError(f"{f}: corrupt training state ({e})") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or \
            not all(isinstance(state.get(k), int) for k in ("step", "epoch", "epoch_step")):
        version = state.get("version") if isinstance(state, dict) else "?"
        raise ChitchatError(f"{f}: unrecognised or incomplete training state (version {version})")
    return state


def _load_pt(f: Path):
    if not f.is_file():
        raise ChitchatError(f"{f.parent}: checkpoint incomplete (no {f.name})")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds on truncated or foreign files
        raise ChitchatError(f"{f}: corrupt checkpoint file ({str(e).splitlines()[0][:200]})") from None


def load_optimizer_state(path: Path) -> dict:
    data = _load_pt(Path(path) / STATE_PT)
    if not isinstance(data, dict) or "optimizer" not in data:
        raise ChitchatError(f"{path / STATE_PT}: corrupt checkpoint file (no optimizer state)")
    return data["optimizer"]


def load_rng_state(path: Path, rank: int) -> dict | None:
    f = Path(path) / f"rng_state_{rank}.pt"
    if not f.exists():
        return None
    data = _load_pt(f)
    if not isinstance(data, dict) or "cpu" not in data:
        raise ChitchatError(f"{f}: corrupt checkpoint file (no RNG state)")
    return data
