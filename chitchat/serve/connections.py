"""Connections of `chitchat serve`: what uvicorn is run with, and what it lacks.

uvicorn's h11 server closes an idle keep-alive connection (`timeout_keep_alive`) and answers 503
beyond `limit_concurrency`, but it waits forever for a request that never comes or never ends,
and keeps every connection it accepts. `protocol_class` adds, per connection:
- a header timeout: the request line and headers must be in within `header_timeout` seconds of
  the connection's start (or of the end of the previous response), else the connection is closed;
- a body timeout: the body must be in within `body_timeout` seconds of the headers;
- a connection limit: beyond `max_connections` open ones, a new connection is closed at once.
`quiet_file_exhaustion` turns asyncio's traceback for every failed `accept()` when the process is
out of file descriptors into one log line a minute. `file_limit` raises the soft file limit toward
the hard one so that `max_connections` fits in it, or caps the connections to what fits.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("uvicorn.error")
SPARE_FILES = 64  # descriptors kept for the models, logs and the rest of the process
OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body timeouts and a connection limit (class attributes,
    set by `protocol_class`)."""

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 256
    closed_early = 0  # connections closed by a timeout or the limit (all instances)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_deadline: asyncio.TimerHandle | None = None
        self._reading_body = False
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            TimedH11Protocol.closed_early += 1
            self.transport.abort()
            return
        self._arm(self.header_timeout)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if getattr(self, "_read_deadline", None) is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if not self.transport.is_closing():
            TimedH11Protocol.closed_early += 1
            self.transport.close()  # connection_lost tells a request still reading its body it is gone

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def _follow(self) -> None:
        """Move the deadline with the request: headers in, then the body, then none."""
        state = self.conn.their_state
        if state is h11.SEND_BODY and not self._reading_body:
            self._reading_body = True
            self._arm(self.body_timeout)
        elif state not in (h11.IDLE, h11.SEND_BODY):
            self._reading_body = False
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next request, when one is pipelined
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._reading_body = False
            self._arm(self.header_timeout)  # waiting for the next request's headers
        else:
            self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_class(header_timeout: float, body_timeout: float, max_connections: int) -> type[TimedH11Protocol]:
    return type("ChitchatH11Protocol", (TimedH11Protocol,), {
        "header_timeout": header_timeout, "body_timeout": body_timeout, "max_connections": max_connections})


def quiet_file_exhaustion(loop: asyncio.AbstractEventLoop, every_s: float = 60.0) -> None:
    """Log running out of file descriptors once per `every_s` seconds, as one line without a
    traceback; every other exception goes to the handler the loop had."""
    previous = loop.get_exception_handler()
    last = [-float("inf")]
    missed = [0]

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in OUT_OF_FILES:
            now = time.monotonic()
            if now - last[0] >= every_s:
                more = f" ({missed[0]} more since the last report)" if missed[0] else ""
                logger.error("out of file descriptors (%s): new connections wait until some close%s; "
                             "lower --max-connections or raise `ulimit -n`", exc.strerror, more)
                last[0], missed[0] = now, 0
            else:
                missed[0] += 1
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def file_limit(max_connections: int, say) -> int:
    """The connections the process's file limit allows: the soft limit raised toward the hard one to
    fit `max_connections` (plus spares); when it cannot be, `max_connections` is lowered (said once)."""
    try:
        import resource  # POSIX only
    except ImportError:
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        fits = max(1, soft - SPARE_FILES)
        say(f"warning: the file limit ({soft}) holds {fits} connections, not --max-connections {max_connections}")
        return fits
    return max_connections
