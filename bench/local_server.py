"""`chitchat serve` in a child process, for the serve benches and docs/screenshot.py: a free port on
127.0.0.1, the command started from this checkout, and waiting until /healthz answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(args: list[str]) -> subprocess.Popen:
    """`python -m chitchat serve ARGS` with this checkout's package first on the path and no API key
    taken from the environment (the figures are those of a key-less server)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("CHITCHAT_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "chitchat", "serve", *args], cwd=ROOT, env=env)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, poll: float = 0.2) -> str | None:
    """None once `url`/healthz answers 200; else why it did not (the server exited, or `timeout` s passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"the server exited with status {proc.returncode}"
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return None
        except httpx.TransportError:
            pass
        time.sleep(poll)
    return "the server did not come up"
