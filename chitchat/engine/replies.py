"""What the engine hands back: candidates (sampled or from another source), the chosen reply, and the steps of a streamed one.

Streaming generation is a generator that yields one step per decoding step and returns the final
result (`Steps`); `run_to_end` drives one to its end, so the batch and the streamed forms of a call
give the same result for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Candidate:
    """One candidate reply: its text and token ids, the source that gave it ("sampled", or another
    candidate source's name), whether it ended with [SEP] (False: cut at max_len), and its scores
    (`scores[name]` for each scoring computed, chitchat.engine.scoring; lower is better; NaN or inf
    when a model failed on it). A sampled candidate comes with its "likelihood"."""

    text: str
    ids: list[int]
    source: str = "sampled"
    finished: bool = True
    scores: dict[str, float] = field(default_factory=dict)
    retrieval: float | None = None  # a retrieved candidate's retrieval score (the contexts' similarity)

    @property
    def empty(self) -> bool:
        return not self.text.strip()

    def to_dict(self) -> dict:
        return {"text": self.text, "source": self.source, "finished": self.finished,
                "scores": {name: _json_float(v) for name, v in self.scores.items()}}


@dataclass
class Reply:
    text: str
    candidates: list[Candidate]
    chosen: int
    ranking: str  # the ranking used (chitchat.engine.ranking: "mmi", "mmi+0.5*pmi", ...), or "likelihood"
    # when no candidate has a finite score under it
    attempts: int = 1  # sampling rounds (more than 1 when every candidate came out empty)


@dataclass
class ReplyStep:
    """One decoding step of `Engine.replies_stream`: for each history still sampled, the new token of
    each of its candidates (None: that candidate had ended; [SEP] ends it). `attempt` counts the
    sampling rounds: a new round (every candidate came out empty) starts its replies afresh."""

    attempt: int
    tokens: dict[int, list[int | None]]


Steps = Generator  # a generator of steps whose return value is the final result (see run_to_end)


class TextDecoder(Protocol):
    """What `WrittenText` needs of an engine: its [SEP] id and its ids -> text."""

    sep_id: int

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class WrittenText:
    """One reply's text as `Engine.replies_stream` writes it (one candidate: the reply is known as
    it is written). `add` each step's token; it returns the new text."""

    engine: TextDecoder
    attempt: int = 0  # the sampling round whose tokens `ids` holds
    ids: list[int] = field(default_factory=list)
    text: str = ""  # what `add` has returned so far, joined

    def add(self, step: ReplyStep, row: int) -> str:
        """The new text once history `row`'s token of `step` (its only candidate's) is added."""
        if step.attempt != self.attempt:  # a new round: the last one's reply was empty, nothing was shown
            self.attempt, self.ids = step.attempt, []
        tokens = step.tokens.get(row)
        token = tokens[0] if tokens else None
        if token is None or token == self.engine.sep_id:
            return ""
        self.ids.append(token)
        text = self.engine.decode(self.ids)  # a prefix of the next one's: decode strips spaces at the ends only
        new, self.text = text[len(self.text):], text
        return new


def run_to_end(steps: Generator):
    """Drive a streaming generation to its end; its result."""
    try:
        while True:
            next(steps)
    except StopIteration as end:
        return end.value


def _json_float(x: float | None):
    if x is None:
        return None
    return x if math.isfinite(x) else str(x)
