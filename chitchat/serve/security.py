"""The security layer of `chitchat serve`, as pure ASGI middlewares and small helpers.

- `HostCheck`: only the Host names configured are served (on loopback: localhost, 127.0.0.1 and
  [::1], any port), so that a web page cannot reach a key-less local server by DNS rebinding.
- `CrossSiteCheck`: a state-changing request (POST, PUT, PATCH, DELETE) from another site is
  refused: `Sec-Fetch-Site: cross-site` or `same-site`, or an `Origin` that is not this server's.
  A POST that carries a body type other than JSON is refused before any route reads it, so a
  form or a `no-cors` fetch (which can only send form and text types) cannot change anything.
  Clients outside a browser (curl, SDKs) send none of these headers and are not affected.
- `SecurityHeaders`: a Content-Security-Policy on every response (the chat page's inline script
  and style allowed by their hashes, nothing from another origin, no framing),
  `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, and `Cache-Control:
  no-store` on everything but the pages and their files (session histories are not kept by caches).
- `RateLimit`: a token bucket per client (an IPv4 address or IPv6 /64), for session creation.
- `redact_session_ids`: a logging filter that keeps session ids (bearer capabilities) out of the
  access log.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from typing import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chitchat.serve.clients import client_key
from chitchat.serve.http import error_response

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"  # JSON and event streams


def host_name(value: str) -> str:
    """"Example.COM:8000" -> "example.com", "[::1]:8000" -> "[::1]"."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[:end + 1] if end > 0 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostCheck:
    def __init__(self, app: ASGIApp, hosts: tuple[str, ...]):
        self.app = app
        self.any = "*" in hosts
        self.hosts = frozenset(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.any:
            host = Headers(scope=scope).get("host", "")
            if host_name(host) not in self.hosts:
                await error_response(400, "this server does not answer to that Host name "
                                          "(chitchat serve --allowed-hosts)")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _origin_netloc(origin: str) -> tuple[str, str] | None:
    """("http", "localhost:8000") from an Origin header; None when it is "null" or malformed."""
    scheme, sep, netloc = origin.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https") or not netloc or "/" in netloc:
        return None
    return scheme, netloc


def _strip_default_port(netloc: str, scheme: str) -> str:
    default = ":443" if scheme == "https" else ":80"
    return netloc[:-len(default)] if netloc.endswith(default) else netloc


class CrossSiteCheck:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            problem = self.problem(Headers(scope=scope), scope)
            if problem is not None:
                status, message = problem
                await error_response(status, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def problem(headers: Headers, scope: Scope) -> tuple[int, str] | None:
        if headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
            return 403, "a request from another site cannot change anything here"
        origin = headers.get("origin")
        if origin is not None:
            parsed = _origin_netloc(origin)
            host = headers.get("host", "").strip().lower()
            if parsed is None or _strip_default_port(parsed[1], parsed[0]) != _strip_default_port(
                    host, scope.get("scheme", "http")):
                return 403, "a request from another origin cannot change anything here"
        content_type = headers.get("content-type")
        if scope["method"] != "DELETE" and content_type is not None and \
                content_type.split(";", 1)[0].strip().lower() != "application/json":
            return 422, "the body must be a JSON object sent with Content-Type: application/json"
        return None


def inline_hashes(page: str, tag: str) -> list[str]:
    """CSP sources ('sha256-...') for the contents of each inline <tag> element of a page."""
    return [f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in re.findall(rf"<{tag}>(.*?)</{tag}>", re.sub(r"<!--.*?-->", "", page, flags=re.S), re.S)]


def page_csp(page: str) -> str:
    """The chat page's policy: its own inline script and style (by hash), requests to this origin
    only, nothing loaded from elsewhere, never framed."""
    return (f"default-src 'self'; script-src {' '.join(inline_hashes(page, 'script'))}; "
            f"style-src {' '.join(inline_hashes(page, 'style'))}; img-src 'self' data:; connect-src 'self'; "
            f"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class SecurityHeaders:
    """`pages`: path -> Content-Security-Policy of the pages (the chat page, /docs) and their files,
    which caches may keep if they ask again (no-cache); every other answer is API_CSP and no-store."""

    def __init__(self, app: ASGIApp, pages: dict[str, str]):
        self.app = app
        self.pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        page = path in self.pages
        extra = [(b"content-security-policy", self.pages.get(path, API_CSP).encode()),
                 (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                 (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-cache" if page else b"no-store")]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)


class RateLimit:
    """A token bucket per client: `burst` at once, then `per_minute` on average. Bounded: once
    `max_clients` are held, the buckets that have refilled are dropped, and if that is not enough, all
    but the most recently seen half (a client forgotten so gets a full bucket back)."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000):
        self.rate, self.burst, self.clock, self.max_clients = per_minute / 60.0, burst, clock, max_clients
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self.refused = 0

    def _tokens(self, client: str, now: float) -> float:
        tokens, when = self.buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - when) * self.rate)

    def take(self, client: str) -> float:
        """0 when the client (an address: its IPv6 /64 counts as one) may go ahead (a token taken), else
        the seconds until it may."""
        client = client_key(client)
        now = self.clock()
        tokens = self._tokens(client, now)
        if tokens < 1:
            self.refused += 1
            return (1 - tokens) / self.rate
        if len(self.buckets) >= self.max_clients and client not in self.buckets:
            self.buckets = {c: b for c, b in self.buckets.items() if self._tokens(c, now) < self.burst}
            if len(self.buckets) >= self.max_clients:  # all busy: keep the most recently seen half
                recent = sorted(self.buckets.items(), key=lambda item: item[1][1])[-(self.max_clients // 2):]
                self.buckets = dict(recent)
        self.buckets[client] = (tokens - 1, now)
        return 0.0


_SESSION_PATH = re.compile(r"/sessions/[^/?\s]+")


class _RedactSessionIds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "/sessions/" in a for a in record.args):
            record.args = tuple(_SESSION_PATH.sub("/sessions/{id}", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


def redact_session_ids(logger_name: str = "uvicorn.access") -> None:
    """Write /sessions/{id} for every session id in this logger's records (once per logger)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _RedactSessionIds) for f in logger.filters):
        logger.addFilter(_RedactSessionIds())
