"""What `chitchat serve` is configured with: `ServeConfig`, each field its command-line option.

The limits, timeouts and security settings of the server live here, checked by `validate` before
anything listens: a bad value is a one-line error at start, never a failure at the first request.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from chitchat.engine.engine import Engine
from chitchat.engine.settings import ReplySettings
from chitchat.errors import ChitchatError
from chitchat.options import option
from chitchat.serve.clients import trusted_proxies

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # the names a loopback server answers to by default
MIN_KEY_CHARS = 16  # see key_problem
_TIMEOUTS = ("keep_alive_timeout_s", "header_timeout_s", "body_timeout_s", "write_timeout_s")
_NOT_COUNTS = ("settings", "api_key", "allowed_hosts", "forwarded_allow_ips", "batch_window_ms", "session_rate",
               *_TIMEOUTS)


def key_problem(key: str) -> str | None:
    """Why an API key cannot be used, or None. A bearer token travels in an HTTP header, which only
    carries visible ASCII reliably (browsers refuse anything else in fetch headers), so a key is
    visible ASCII without spaces: any other key would fail every request, or lose bytes on the way.
    It has at least MIN_KEY_CHARS characters: anyone who reaches the server may try keys as fast as
    it answers, and short keys ("s3cret") are in every password list, while 16 random characters of
    `secrets.token_urlsafe` (96 bits) are out of reach of guessing. An empty key is refused rather
    than taken as "no key": a deployment that sets the variable means to have one."""
    bad = sorted({c for c in key if not 0x21 <= ord(c) <= 0x7E})
    make = "e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`"
    if not key:
        return f"CHITCHAT_API_KEY is set but empty: unset it to serve without a key, or set one ({make})"
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        return (f"CHITCHAT_API_KEY holds characters an HTTP header cannot carry ({shown}): "
                f"use visible ASCII without spaces, {make}")
    if len(key) < MIN_KEY_CHARS:
        return (f"CHITCHAT_API_KEY has {len(key)} characters: a key needs at least {MIN_KEY_CHARS}, "
                f"as short keys can be guessed ({make})")
    return None


@dataclass
class ServeConfig:
    settings: ReplySettings = field(default_factory=ReplySettings)  # every request's, unless it changes some
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
                               help="sessions held; when full, a new one takes the place of another client's only "
                                    "if that client holds at least two more, else it is refused (503)")
    session_idle_s: float = option(3600.0, flag="--session-idle", metavar="S",
                                   help="seconds after which an unused session expires")
    session_rate: float = option(30.0, metavar="N",
                                 help="sessions one client (an IPv4 address or IPv6 /64) may create per minute, "
                                      "on average (beyond: 429)")
    session_burst: int = option(20, metavar="N", help="sessions one client may create at once before --session-rate applies")
    client_sessions: int = option(32, metavar="N",
                                  help="sessions one client may hold (beyond: 429); when the store is full, a new "
                                       "session takes the least recently used one of the client holding the most")
    # -- connections (uvicorn's settings where it has them)
    max_connections: int = option(256, metavar="N",
                                  help="open connections; beyond, a new one takes an idle one of the client holding "
                                       "the most, or is closed at once (capped by the process's file limit)")
    client_connections: int = option(32, metavar="N",
                                      help="open connections one client may hold (beyond: closed at once); not "
                                           "counted for the proxies of --forwarded-allow-ips")
    keep_alive_timeout_s: float = option(5.0, flag="--keep-alive-timeout", metavar="S",
                                         help="seconds an idle keep-alive connection is kept between requests")
    header_timeout_s: float = option(10.0, flag="--header-timeout", metavar="S",
                                     help="seconds a client has to send a request's line and headers, from the "
                                          "connection's start or the end of the previous response")
    body_timeout_s: float = option(30.0, flag="--body-timeout", metavar="S",
                                   help="seconds a client has to send a request's body once its headers are in")
    write_timeout_s: float = option(10.0, flag="--write-timeout", metavar="S",
                                    help="seconds a client has to read what the server sends once 64 KiB wait for "
                                         "it; else the connection is reset")
    forwarded_allow_ips: str | None = option(None, metavar="IP,IP",
                                             help="reverse proxies (addresses or networks, comma-separated, * for "
                                                  "any) whose X-Forwarded-For and X-Forwarded-Proto are believed; "
                                                  "default: none, every client is the address it connects from")
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
        self.settings = self.settings.validate()
        small = [f.name for f in fields(self) if f.name not in _NOT_COUNTS and getattr(self, f.name) < 1]
        small += [name for name in (*_TIMEOUTS, "session_rate") if not getattr(self, name) > 0]
        if small or self.batch_window_ms < 0:
            raise ChitchatError(f"serve limits must be >= 1, timeouts and rates > 0 (the batch window >= 0): "
                                f"{', '.join(small) or 'batch_window_ms'}")
        if self.api_key is not None and (problem := key_problem(self.api_key)):
            raise ChitchatError(problem)
        if not self.hosts():
            raise ChitchatError("--allowed-hosts names no host (use * for any)")
        trusted_proxies(self.forwarded_allow_ips)  # raises on a name that is not an address or network
        if self.settings.max_len > self.max_tokens:
            raise ChitchatError(f"--max-len {self.settings.max_len} is over --max-tokens {self.max_tokens}")
        engine.context_budget(self.max_tokens)  # raises when the longest reply leaves no room for a history
        return self
