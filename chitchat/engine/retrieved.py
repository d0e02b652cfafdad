"""Candidates retrieved from a response index (chitchat.retrieval): the replies of the (context, reply)
pairs whose contexts are nearest to the dialogue's, as the source "retrieved" (chitchat.engine.sources),
as many per reply as the `retrieved` setting says. Each carries its retrieval score (the index's
similarity of the two contexts) as `Candidate.retrieval`.

The scoring `retrieval` ranks by it: minus the similarity, so the index's first choice comes first;
a candidate from another source has none and ranks after every retrieved one. It is what the
default ranking puts first: judged on held-out contexts, the index's top reply was far more often
sensible than any sampled one (models/default/README.md)."""

from __future__ import annotations

from pathlib import Path

import math

from chitchat.engine.replies import Candidate
from chitchat.engine.scoring import Scoring, register
from chitchat.engine.sources import make_candidate
from chitchat.retrieval.index import ResponseIndex, tokenizer_identity

NAME = "retrieved"


class RetrievalSource:
    name = NAME
    count = "retrieved"

    def __init__(self, index: ResponseIndex):
        self.index = index

    @classmethod
    def load(cls, index_dir: str | Path, model_dir: str | Path) -> "RetrievalSource":
        """The index in `index_dir`, refused (one-line error naming the file) when built for another
        tokenizer than `model_dir`'s."""
        return cls(ResponseIndex.load(index_dir, tokenizer=tokenizer_identity(model_dir)))

    def gather(self, engine, histories: list[list[str]], n: int, max_len: int) -> list[list[Candidate]]:
        out = []
        for hits in self.index.query_many(histories, k=n):
            found = []
            for hit in hits:
                c = make_candidate(engine, hit.reply, NAME, max_len)
                if c.ids:
                    c.retrieval = hit.score
                    found.append(c)
            out.append(found)
        return out


def score_retrieval(engine, groups) -> None:
    for group in groups:
        for c in group.candidates:
            c.scores["retrieval"] = -c.retrieval if c.retrieval is not None else math.nan


register(Scoring("retrieval", "minus the index's similarity of the dialogue to the retrieved reply's context",
                 score_retrieval, available=lambda engine: any(s.name == NAME for s in engine.sources)))
