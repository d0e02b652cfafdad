"""Paths and helpers several test folders share (not a test module; fixtures are in conftest.py):
the real CLI in a child process, small corpora, `chitchat serve` as a real process."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
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


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of one utterance by the tokenizer itself (the reference the pipeline must match)."""
    return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, port: int, proc: subprocess.Popen):
        self.url, self.port, self.proc = url, port, proc
        self.stdout = self.stderr = ""  # once it has ended


@contextmanager
def running_server(model_dirs, *args: str, env: dict | None = None, files: int | None = None):
    """`chitchat serve` on the tiny models and a free port, ready (`.url`, `.port`); stopped with SIGINT
    after, its stdout (the access log, at `--log-level info` in `args`) and stderr then in `.stdout` and
    `.stderr`. `files`: the process's file limit, soft and hard."""
    def limit_files():
        if files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    port = free_port()
    cmd = [PYTHON, "-m", "chitchat", "serve", "--model", str(model_dirs[0]), "--mmi-model", str(model_dirs[1]),
           "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**cli_env(), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit_files)
    server = Server(f"http://127.0.0.1:{port}", port, proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        yield server
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            server.stdout, server.stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            server.stdout, server.stderr = proc.communicate()
