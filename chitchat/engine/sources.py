"""Where candidate replies come from, besides sampling.

The engine samples candidates itself: the source "sampled", as many as the `candidates` setting says.
Every other source is a `CandidateSource` the engine holds (`Engine.sources`): once per call it gives
each history its candidates, marked with the source's name, and they are scored and ranked with the
sampled ones by the same ranking. How many a source gives is a field of `ReplySettings` that the
source names (`count`, listed in chitchat.engine.settings.COUNT_FIELDS); 0 switches it off.
"""

from __future__ import annotations

from typing import Protocol

from chitchat.engine.replies import Candidate


class CandidateSource(Protocol):
    name: str  # marks its candidates (`Candidate.source`)
    count: str  # the ReplySettings field holding how many candidates it gives per reply

    def gather(self, engine, histories: list[list[str]], n: int, max_len: int) -> list[list[Candidate]]:
        """At most `n` candidates for each history (normalised utterances, oldest first, the user's
        new one last), each at most `max_len` tokens (`make_candidate` cuts them)."""
        ...


def make_candidate(engine, text: str, source: str, max_len: int) -> Candidate:
    """A candidate of a source from its text: its ids cut to `max_len` (then not finished)."""
    ids = engine.encode(text)
    cut = len(ids) > max_len
    ids = ids[:max_len]
    return Candidate(engine.decode(ids) if cut else text, ids, source, finished=not cut)
