"""Connections of `chitchat serve`: what uvicorn is run with, and what it lacks.

uvicorn's h11 server closes an idle keep-alive connection (`timeout_keep_alive`) and answers 503
beyond `limit_concurrency`, but it waits forever for a request that never comes or never ends, or
for a client that never reads, keeps every connection it accepts, and lets a head of any size
through when it arrives in one piece. `protocol_class` adds, per connection:
- a header timeout: the request line and headers must be in within `header_timeout` seconds of
  the connection's start (or of the end of the previous response), else the connection is closed;
- a body timeout: the body must be in within `body_timeout` seconds of the headers;
- a write timeout: once the data waiting for the client passes the transport's high-water mark
  (64 KiB), the client has `write_timeout` seconds to read it down to the low-water mark (16 KiB),
  else the connection is reset and what is queued for it dropped;
- a head limit: a request line and headers over HEAD_LIMIT bytes are answered 431 and the
  connection closed;
- fair connection limits: a client (chitchat.serve.clients) holds at most `client_connections`
  (the trusted proxies are not limited so); beyond `max_connections` open ones, a new connection
  takes the place of an idle one (no request in progress, or its body still coming) of the client
  holding the most, when that client holds at least two more than the newcomer, else it is closed
  at once. So one client, however many connections it opens or reopens, cannot keep the others out.
`quiet_file_exhaustion` turns asyncio's traceback for every failed `accept()` when the process is
out of file descriptors into one log line a minute; `quiet_cancelled_requests` drops the traceback
of each request cancelled at the end of the graceful shutdown (uvicorn says how many in one line).
`file_limit` raises the soft file limit toward the hard one so that `max_connections` fits in it, or
caps the connections to what fits.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import socket
import struct
import time
from collections import Counter

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from chitchat.serve.clients import client_key, is_trusted, trusted_proxies

logger = logging.getLogger("uvicorn.error")
SPARE_FILES = 64  # descriptors kept for the models, logs and the rest of the process
OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
HEAD_LIMIT = 16 * 1024  # bytes of request line and headers
LINGER_S = 2.0  # after a 431, how long the rest of the client's request is read and dropped
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_431_BODY = json.dumps({"error": {"message": f"request line and headers over {HEAD_LIMIT} bytes",
                                  "type": "invalid_request_error", "param": None}}).encode()
_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\nx-content-type-options: nosniff\r\n"
        b"cache-control: no-store\r\n\r\n" % len(_431_BODY)) + _431_BODY


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header, body and write timeouts, a head limit and fair connection
    limits (class attributes, set by `protocol_class`)."""

    header_timeout = 10.0
    body_timeout = 30.0
    write_timeout = 10.0
    max_connections = 256
    client_connections = 32
    proxies: tuple | None = ()  # trusted proxies (`trusted_proxies`): not limited per client
    closed_early = 0  # connections closed by a timeout or a limit (all instances)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._reading_body = False
        self._discarding = False
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        self.client_key, self.proxy = client_key(host), is_trusted(host, self.proxies)
        if not self._admit():
            self._close_now()
            return
        self._arm(self.header_timeout)

    def _admit(self) -> bool:
        """Room for this connection: within its client's share, and within the limit, made by closing
        an idle connection of the client holding the most if it holds at least two more than this one's."""
        others = [c for c in self.connections if c is not self and hasattr(c, "client_key")]
        mine = sum(c.client_key == self.client_key for c in others)
        if not self.proxy and mine >= self.client_connections:
            return False
        if len(others) < self.max_connections:
            return True
        for client, held in Counter(c.client_key for c in others).most_common():
            if held < mine + 2:
                return False
            idle = next((c for c in others if c.client_key == client and c._idle()), None)
            if idle is not None:
                idle._close_now()
                return True
        return False

    def _idle(self) -> bool:
        """No request being answered: none yet (or a head still coming), or its body still coming."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and self.conn.our_state in (h11.IDLE,
                                                                                             h11.SEND_RESPONSE)

    def _close_now(self) -> None:
        TimedH11Protocol.closed_early += 1
        self.connections.discard(self)  # at once: a connection made in the same tick counts without it
        self.transport.abort()

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
        if self._discarding:  # the rest of a refused request
            return
        super().data_received(data)
        self._follow()

    def handle_events(self) -> None:
        """Before h11 parses a new request: refuse a head over HEAD_LIMIT (h11 itself limits only a head
        still incomplete, and uvicorn answers that 400)."""
        if self.conn.their_state is h11.IDLE and not self._discarding:
            buffered = self.conn.trailing_data[0]
            end = _HEAD_END.search(buffered)
            if (end.end() if end else len(buffered)) > HEAD_LIMIT:
                self._refuse_head()
                return
        super().handle_events()

    def _refuse_head(self) -> None:
        """431, then read and drop what the client still sends for a while (closing with its data unread
        would reset the connection, and the client might never see the answer)."""
        TimedH11Protocol.closed_early += 1
        self._discarding = True
        self.transport.write(_431)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_S)

    def _follow(self) -> None:
        """Move the deadline with the request: headers in, then the body, then none."""
        state = self.conn.their_state
        if self._discarding:
            return
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

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self._stop_write_deadline()
        super().resume_writing()

    def _stop_write_deadline(self) -> None:
        if getattr(self, "_write_deadline", None) is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _write_timed_out(self) -> None:
        """The client has not read for `write_timeout` seconds: reset the connection (SO_LINGER 0), so
        that neither the process nor the kernel keeps what was queued for it."""
        self._write_deadline = None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._close_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_write_deadline()
        super().connection_lost(exc)


def protocol_class(cfg, max_connections: int) -> type[TimedH11Protocol]:
    """The protocol with a ServeConfig's timeouts and limits (`max_connections`: as the file limit allows)."""
    return type("ChitchatH11Protocol", (TimedH11Protocol,), {
        "header_timeout": cfg.header_timeout_s, "body_timeout": cfg.body_timeout_s,
        "write_timeout": cfg.write_timeout_s, "max_connections": max_connections,
        "client_connections": cfg.client_connections, "proxies": trusted_proxies(cfg.forwarded_allow_ips)})


class _QuietCancelled(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


def quiet_cancelled_requests(logger_name: str = "uvicorn.error") -> None:
    """Drop the traceback uvicorn logs for each request cancelled when --shutdown-timeout ran out: it
    has already said, in one line, how many it cancelled, and a cancelled task has no other cause."""
    log = logging.getLogger(logger_name)
    if not any(isinstance(f, _QuietCancelled) for f in log.filters):
        log.addFilter(_QuietCancelled())


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
