"""Shared paths, fixtures and helpers of the preprocessing tests (not a test module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus"
VOCAB = ROOT / "vocab" / "vocab.txt"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
_VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PYTHON) if _VENV_PYTHON.exists() else sys.executable


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONWARNINGS", None)
    return env


def run_chitchat(*args: str, cwd: Path = ROOT, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m chitchat ARGS` in a child process (the real CLI, stderr captured)."""
    return subprocess.run([PYTHON, "-m", "chitchat", *map(str, args)], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def write_jsonl(path: Path, dialogues: list) -> Path:
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues), encoding="utf-8")
    return path


def shared_corpora() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (real corpora live beside the project)")
    return SHARED


@pytest.fixture(scope="session")
def tokenizer():
    from chitchat.tokens.tokenizer import load_tokenizer

    return load_tokenizer(VOCAB)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of one utterance by the tokenizer itself (the reference the pipeline must match)."""
    return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
