"""The package as a user installs it: `pip install .` (not editable) into a fresh virtual environment,
then `chitchat preprocess` with the default vocabulary (package data, not the checkout's vocab/) and
`chitchat chat` on the shipped model, run from outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from support import CORPUS, ROOT, VOCAB

# what `pip install .` needs of the checkout; the rest (the venv, runs, git, the models) would only slow the copy
_LEFT_OUT = shutil.ignore_patterns(".venv", ".git", "runs", "data", "models", "build", "*.egg-info", "__pycache__",
                                   ".pytest_cache")


def _run(*cmd, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1200, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_a_wheel_install_preprocesses_with_the_default_vocabulary_and_chats(tmp_path):
    started = time.time()
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_LEFT_OUT)
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python, chitchat = bin_dir / "python", bin_dir / "chitchat"
    _run(python, "-m", "pip", "install", "--quiet", "torch==2.13.0")  # the Makefile's pin
    _run(python, "-m", "pip", "install", "--quiet", source)
    installed = time.time() - started

    # outside the checkout, with nothing of it on the path: only the installed package answers
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CHITCHAT_DEFAULT_MODEL")}
    env["CHITCHAT_HOME"] = str(tmp_path / "home")
    work = tmp_path / "work"
    work.mkdir()
    where = _run(python, "-c", "import chitchat.tokens.tokenizer as t; print(t.DEFAULT_VOCAB)", cwd=work, env=env)
    assert where.stdout.strip().startswith(str(venv))
    _run(chitchat, "preprocess", CORPUS / "chitchat.txt", "--output", work / "data", "--no-progress", cwd=work, env=env)
    manifest = json.loads((work / "data" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["vocab_size"] == len(VOCAB.read_text(encoding="utf-8").splitlines())
    model = ROOT / "models" / "default"
    chat = _run(chitchat, "chat", "--model", model / "dialogue", "--mmi-model", model / "mmi", "--seed", "1",
                input="你好\n", cwd=work, env=env)
    assert len(chat.stdout.strip().splitlines()) == 1 and chat.stdout.strip()
    print(f"installed in {installed:.0f} s, whole test {time.time() - started:.0f} s")
