"""Candidates retrieved from a response index (chitchat.retrieval): the replies of the (context, reply)
pairs whose contexts are nearest to the dialogue's, as the source "retrieved" (chitchat.engine.sources),
as many per reply as the `retrieved` setting says. Each carries its retrieval score (the index's
similarity of the two contexts) as `Candidate.retrieval`, for the scorings that want it."""

from __future__ import annotations

from pathlib import Path

from chitchat.engine.replies import Candidate
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
