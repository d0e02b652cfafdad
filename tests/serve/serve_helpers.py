"""Helpers shared by the tests of `chitchat serve` (the fixtures are in this folder's conftest.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
from fastapi.testclient import TestClient

from chitchat.serve.app import ServeConfig, create_app
from chitchat.engine.settings import ReplySettings

from support import running_server

KEY = "test-key-0123456789"  # at least 16 characters, as the server requires
HISTORY = ["你好", "你好啊,今天过得怎么样"]
USER = [{"role": "user", "content": "还不错,刚下班"}]


def config(**changes) -> ServeConfig:
    """Short replies, small limits: fast, and every limit easy to reach."""
    settings = changes.pop("settings", ReplySettings(max_len=6, candidates=3))
    base = dict(settings=settings, max_body_bytes=4096, max_text_chars=100, max_history=6, max_tokens=12, max_n=4,
                max_sessions=4, batch_window_ms=2)
    return ServeConfig(**{**base, **changes})


@contextmanager
def serve(engine, **changes):
    """A test client of the app (at http://localhost: a Host name a loopback server answers to)."""
    with TestClient(create_app(engine, config(**changes)), base_url="http://localhost") as client:
        yield client


class Spy:
    """Records each Engine.replies_stream call (histories, sampling); optionally holds it until released."""

    def __init__(self, engine, monkeypatch, hold: bool = False):
        self.real = engine.replies_stream
        self.calls: list[tuple[list, ReplySettings, int | None]] = []  # (histories, settings, seed)
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        monkeypatch.setattr(engine, "replies_stream", self)

    def __call__(self, histories, settings=None, **kw):
        self.calls.append(([list(h) for h in histories], settings, settings.seed if settings is not None else None))
        self.entered.set()
        assert self.release.wait(30)
        return self.real(histories, settings, **kw)


def error_of(r, status: int, param: str | None = None) -> str:
    """The response is an OpenAI-style JSON error with this status; its message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param"} and err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param
    return err["message"]


def wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def sse(text: str) -> list:
    """The JSON data of each server-sent event ([DONE] as a string)."""
    events = [e[len("data: "):] for e in text.split("\n\n") if e]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def one_candidate(**changes) -> dict:
    return {"settings": ReplySettings(max_len=12, min_len=8, candidates=1), **changes}


def serve_process(model_dirs, *args: str, files: int | None = None):
    """`running_server` with one short candidate per reply on one thread (see tests/support.py)."""
    return running_server(model_dirs, "--max-len", "4", "--candidates", "1", "--threads", "1", *args, files=files)


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def closed_by_server(sock: socket.socket) -> bool:
    """The server has closed this connection (whatever it sent before)."""
    sock.settimeout(0.05)
    try:
        while sock.recv(4096):
            pass
        return True
    except (socket.timeout, BlockingIOError):
        return False
    except OSError:  # reset
        return True
