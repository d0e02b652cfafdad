"""`chitchat serve` as a real process, for the tests that need a socket (disconnects, the browser)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from contextlib import contextmanager

import httpx

from preprocessing_support import PYTHON, ROOT, cli_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, proc: subprocess.Popen):
        self.url, self.proc = url, proc
        self.stderr = ""  # once it has ended


@contextmanager
def running_server(model_dirs, *args: str, env: dict | None = None):
    """`chitchat serve` on the tiny models and a free port, ready; stopped with SIGINT after (its
    stderr then in `.stderr`)."""
    port = free_port()
    cmd = [PYTHON, "-m", "chitchat", "serve", "--model", str(model_dirs[0]), "--mmi-model", str(model_dirs[1]),
           "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**cli_env(), **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    server = Server(f"http://127.0.0.1:{port}", proc)
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
            _, server.stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, server.stderr = proc.communicate()
