"""Server-side chat sessions of `chitchat serve`: a bounded store of bounded histories.

The store holds at most `max_sessions` sessions: when it is full, creating one more is refused
(`create` returns None) until a session expires or is deleted, so that no client can push out
another's session; a session unused for `idle_s` seconds expires. Expiry removes whole sessions and
touches nothing else: every session still held keeps its history. A session keeps only the utterances the
model can see next turn (`max_history_len - 1`, as `ChatSettings` counts them), and its turns run
one at a time (a per-session lock), so that each turn sees the previous one. Used from the event
loop only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class ChatSession:
    used: float
    history: list[str] = field(default_factory=list)  # normalised utterances, oldest first
    turns: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SessionStore:
    def __init__(self, max_sessions: int, idle_s: float, max_history_len: int,
                 clock: Callable[[], float] = time.monotonic):
        self.max_sessions, self.idle_s, self.max_history_len = max_sessions, idle_s, max_history_len
        self.clock = clock
        self.items: OrderedDict[str, ChatSession] = OrderedDict()  # least recently used first
        self.refused = 0  # creations refused: the store was full
        self.expired = 0  # for idle time

    def __len__(self) -> int:
        self.expire()
        return len(self.items)

    def expire(self) -> None:
        now = self.clock()
        while self.items:
            sid, s = next(iter(self.items.items()))
            if now - s.used <= self.idle_s:
                break
            del self.items[sid]
            self.expired += 1

    def create(self) -> str | None:
        """A new session's id; None when the store is full (see `retry_after`)."""
        self.expire()
        if len(self.items) >= self.max_sessions:
            self.refused += 1
            return None
        sid = uuid.uuid4().hex
        self.items[sid] = ChatSession(used=self.clock())
        return sid

    def retry_after(self) -> float:
        """Seconds until the least recently used session expires (at least 1)."""
        if not self.items:
            return 1.0
        oldest = next(iter(self.items.values()))
        return max(1.0, oldest.used + self.idle_s - self.clock())

    def get(self, sid: str) -> ChatSession | None:
        """The session (now the most recently used), or None: never created, deleted or expired."""
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
        return self.items.pop(sid, None) is not None
