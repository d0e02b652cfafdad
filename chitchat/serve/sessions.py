"""Server-side chat sessions of `chitchat serve`: a bounded store of bounded histories, shared fairly.

Each session belongs to the client that created it (an IPv4 address or IPv6 /64, see
chitchat.serve.clients). A client holds at most `per_client` sessions: one more is refused with a
429 until one of its own is deleted or expires. The store holds at most `max_sessions`: when it is
full, a new session takes the place of the least recently used session of the client holding the
most, and only when that client holds at least two more than the creator (so that shares even out
and two clients never take turns pushing out each other's sessions); otherwise the creation is
refused (`create` returns None). So no client, nor a few, can lock the others out, and a client's
session is taken only while it holds more than its share of a full store (a client holding one
session loses it only once as many clients as the store holds sessions each hold one).

A session unused for `idle_s` seconds expires. A session keeps only the utterances the model can see
next turn (`max_history_len - 1`, as `ReplySettings` counts them), and its turns run one at a time (a
per-session lock), so that each turn sees the previous one. Used from the event loop only.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from chitchat.serve.clients import CURRENT_CLIENT, client_key
from chitchat.serve.http import ApiError


@dataclass
class ChatSession:
    used: float
    client: str = "unknown"
    history: list[str] = field(default_factory=list)  # normalised utterances, oldest first
    turns: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SessionStore:
    def __init__(self, max_sessions: int, idle_s: float, max_history_len: int,
                 clock: Callable[[], float] = time.monotonic, per_client: int | None = None):
        self.max_sessions, self.idle_s, self.max_history_len = max_sessions, idle_s, max_history_len
        self.per_client = per_client  # None: no cap but the store's
        self.clock = clock
        self.items: OrderedDict[str, ChatSession] = OrderedDict()  # least recently used first
        self.held: Counter[str] = Counter()  # sessions per client
        self.refused = 0  # creations refused: the store was full
        self.expired = 0  # for idle time
        self.evicted = 0  # taken for another client's session

    def __len__(self) -> int:
        self.expire()
        return len(self.items)

    def _remove(self, sid: str) -> bool:
        s = self.items.pop(sid, None)
        if s is None:
            return False
        self.held[s.client] -= 1
        if self.held[s.client] <= 0:
            del self.held[s.client]
        return True

    def expire(self) -> None:
        now = self.clock()
        while self.items:
            sid, s = next(iter(self.items.items()))
            if now - s.used <= self.idle_s:
                break
            self._remove(sid)
            self.expired += 1

    def create(self, client: str | None = None) -> str | None:
        """A new session's id for `client` (by default the current request's); None when the store is
        full and no client holds more than its share (see `retry_after`). Raises a 429 when the client
        already holds `per_client` sessions."""
        self.expire()
        client = CURRENT_CLIENT.get() if client is None else client_key(client)
        mine = self.held[client]
        if self.per_client is not None and mine >= self.per_client:
            oldest = next(s.used for s in self.items.values() if s.client == client)
            wait = max(1, math.ceil(oldest + self.idle_s - self.clock()))
            raise ApiError(429, f"this client holds its most sessions ({self.per_client}): delete one "
                                f"(DELETE /sessions/{{id}}) or let one expire", headers={"Retry-After": str(wait)})
        if len(self.items) >= self.max_sessions and not self._evict_for(mine):
            self.refused += 1
            return None
        sid = uuid.uuid4().hex
        self.items[sid] = ChatSession(used=self.clock(), client=client)
        self.held[client] += 1
        return sid

    def _evict_for(self, mine: int) -> bool:
        """Make room for a client holding `mine` sessions: remove the least recently used session of
        the client holding the most, when it holds at least `mine + 2`."""
        most = max(self.held.values(), default=0)
        if most < mine + 2:
            return False
        sid = next(sid for sid, s in self.items.items() if self.held[s.client] == most)
        self._remove(sid)
        self.evicted += 1
        return True

    def retry_after(self) -> float:
        """Seconds until the least recently used session expires (at least 1)."""
        if not self.items:
            return 1.0
        oldest = next(iter(self.items.values()))
        return max(1.0, oldest.used + self.idle_s - self.clock())

    def get(self, sid: str) -> ChatSession | None:
        """The session (now the most recently used), or None: never created, deleted, expired or
        taken for another client's."""
        self.expire()
        s = self.items.get(sid)
        if s is not None:
            s.used = self.clock()
            self.items.move_to_end(sid)
        return s

    def record(self, sid: str, user: str, bot: str, max_history_len: int | None = None) -> ChatSession | None:
        """Add a turn to the session, when it is still held; keep what the next turn sees with
        `max_history_len` (the turn's own setting; by default the store's)."""
        s = self.get(sid)
        if s is not None:
            keep = (max_history_len or self.max_history_len) - 1  # the next turn adds the user's new utterance
            s.history = (s.history + [user, bot])[-keep:] if keep > 0 else []
            s.turns += 1
        return s

    def delete(self, sid: str) -> bool:
        return self._remove(sid)
