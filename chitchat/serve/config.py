"""What `chitchat serve` is configured with: `ServeConfig`, each field its command-line option.

The limits, timeouts and security settings of the server live here, checked by `validate` before
anything listens: a bad value is a one-line error at start, never a failure at the first request.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from chitchat.engine.engine import Engine
from chitchat.engine.settings import ChatSettings
from chitchat.errors import ChitchatError
from chitchat.options import option

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # the names a loopback server answers to by default
_NOT_COUNTS = ("settings", "api_key", "allowed_hosts", "batch_window_ms", "keep_alive_timeout_s",
               "header_timeout_s", "body_timeout_s", "session_rate")


def key_problem(key: str) -> str | None:
    """Why an API key cannot be used, or None. A bearer token travels in an HTTP header, which only
    carries visible ASCII reliably (browsers refuse anything else in fetch headers), so a key is
    visible ASCII without spaces: any other key would fail every request, or lose bytes on the way."""
    bad = sorted({c for c in key if not 0x21 <= ord(c) <= 0x7E})
    if not key:
        return "CHITCHAT_API_KEY is set but empty"
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        return (f"CHITCHAT_API_KEY holds characters an HTTP header cannot carry ({shown}): "
                f"use visible ASCII without spaces, e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`")
    return None


@dataclass
class ServeConfig:
    settings: ChatSettings = field(default_factory=ChatSettings)  # sampling, mmi, max_history_len (as the chat)
    api_key: str | None = None  # `chitchat serve` takes it from $CHITCHAT_API_KEY
    # -- limits (each a 4xx JSON error)
    max_body_bytes: int = option(64 * 1024, metavar="N", help="request body size")
    max_text_chars: int = option(2000, metavar="N", help="characters per utterance")
    max_history: int = option(50, metavar="N", help="utterances a request may carry (history, messages)")
    max_tokens: int = option(64, metavar="N", help="max_tokens a request may ask")
    max_n: int = option(8, metavar="N", help="n (replies) a chat completion may ask")
    max_queue: int = option(256, metavar="N", help="requests waiting for the model (beyond: 503)")
    # -- sessions
    max_sessions: int = option(1000, metavar="N",
                               help="sessions held; when full, a new one is refused (503) until one expires "
                                    "or is deleted: no session ever pushes out another")
    session_idle_s: float = option(3600.0, flag="--session-idle", metavar="S",
                                   help="seconds after which an unused session expires")
    session_rate: float = option(30.0, metavar="N",
                                 help="sessions one client (IP address) may create per minute, on average (beyond: 429)")
    session_burst: int = option(20, metavar="N", help="sessions one client may create at once before --session-rate applies")
    # -- connections (uvicorn's settings where it has them)
    max_connections: int = option(256, metavar="N",
                                  help="open connections; beyond, a new one is closed at once and a request on an "
                                       "open one is a 503 (capped by the process's file limit)")
    keep_alive_timeout_s: float = option(5.0, flag="--keep-alive-timeout", metavar="S",
                                         help="seconds an idle keep-alive connection is kept between requests")
    header_timeout_s: float = option(10.0, flag="--header-timeout", metavar="S",
                                     help="seconds a client has to send a request's line and headers, from the "
                                          "connection's start or the end of the previous response")
    body_timeout_s: float = option(30.0, flag="--body-timeout", metavar="S",
                                   help="seconds a client has to send a request's body once its headers are in")
    allowed_hosts: str | None = option(None, metavar="H,H",
                                       help="Host header values served, comma-separated, any port (* for any); "
                                            "default: localhost,127.0.0.1,[::1] when listening on loopback, "
                                            "any otherwise. Set it to the public name behind a proxy")
    # -- batching
    batch_window_ms: float = option(30.0, metavar="MS",
                                    help="how long the model worker waits for more requests to batch with the first")
    max_batch: int = option(32, metavar="N", help="requests per batch")

    def hosts(self) -> tuple[str, ...]:
        """The Host names served (lower case, no port); ("*",) for any."""
        if self.allowed_hosts is None:
            return LOOPBACK_HOSTS
        return tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    def validate(self, engine: Engine) -> "ServeConfig":
        self.settings.validate()
        small = [f.name for f in fields(self) if f.name not in _NOT_COUNTS and getattr(self, f.name) < 1]
        small += [name for name in ("keep_alive_timeout_s", "header_timeout_s", "body_timeout_s", "session_rate")
                  if not getattr(self, name) > 0]
        if small or self.batch_window_ms < 0:
            raise ChitchatError(f"serve limits must be >= 1, timeouts and rates > 0 (the batch window >= 0): "
                                f"{', '.join(small) or 'batch_window_ms'}")
        if self.api_key is not None and (problem := key_problem(self.api_key)):
            raise ChitchatError(problem)
        if not self.hosts():
            raise ChitchatError("--allowed-hosts names no host (use * for any)")
        if self.settings.sampling.max_len > self.max_tokens:
            raise ChitchatError(f"--max-len {self.settings.sampling.max_len} is over --max-tokens {self.max_tokens}")
        engine.context_budget(self.max_tokens)  # raises when the longest reply leaves no room for a history
        return self
