"""Ranking a set of candidate replies by a score, and the retrieval metrics of those rankings.

The coherence and selection modes rank each candidate set by every scoring the engine can compute
(the registry, chitchat.engine.scoring.SCORINGS) and by the chat's own ranking ("chat": the reply
settings' ranking, as the chat would choose). `chitchat.eval.scoring` computes the scores.

Ties are never counted in the true reply's favour: among candidates of equal score the wrong ones
rank first, and a score that is not a finite number ranks last. Metric definitions follow the
response-selection papers (Douban: Wu et al., ACL 2017), for one ranked list of 0/1 labels:

- Recall@k (R10@k when there are 10 candidates): true replies in the top k / true replies;
- MRR: 1 / rank of the first true reply;
- MAP: mean over the true replies of (true replies up to its rank / its rank);
- P@1: 1 when the top candidate is a true reply.
"""

from __future__ import annotations

import math

from chitchat.engine.ranking import Ranking
from chitchat.engine.scoring import SCORINGS, available

CHAT = "chat"  # the chat's ranking, beside the registry's scorings


def scorings(engine) -> list[str]:
    """The scorings eval ranks by on `engine`: every registered one it can compute, then the chat's."""
    return [*available(engine), CHAT]


def label(name: str, chat: Ranking | None = None) -> str:
    """A scoring's row label in the report (no "|": it is a markdown table cell)."""
    if name == CHAT:
        return f"the chat's ranking ({chat})" if chat is not None else "the chat's ranking"
    return (SCORINGS[name].help if name in SCORINGS else name).replace("|", "/")


def values(name: str, candidates: list, chat: Ranking) -> list[float]:
    """Each candidate's score under scoring `name` (lower is better; NaN when missing). The chat's
    ranking leaves out the terms none of the candidates has a score for (given replies have no
    retrieval score: the chat then ranks by the rest of its ranking)."""
    if name == CHAT:
        had = tuple(t for t in chat.terms if any(math.isfinite(c.scores.get(t[1], math.nan)) for c in candidates))
        chat = Ranking(had) if had else chat
        return [chat.score(c) for c in candidates]
    return [c.scores.get(name, math.nan) for c in candidates]


def _key(x: float) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else math.inf


def ranked_labels(scores: list[float], labels: list[int]) -> list[int]:
    """The labels in rank order (best score first); ties put the wrong candidates (label 0) first,
    non-finite scores last."""
    order = sorted(range(len(scores)), key=lambda i: (_key(scores[i]), labels[i] != 0, i))
    return [labels[i] for i in order]


def rank_of_true(scores: list[float], true_index: int) -> int:
    """1-based rank of the candidate `true_index`: 1 + the candidates scoring as well or better."""
    mine = _key(scores[true_index])
    return 1 + sum(1 for i, s in enumerate(scores) if i != true_index and _key(s) <= mine)


def recall_at(ranked: list[int], k: int) -> float:
    positives = sum(1 for x in ranked if x)
    return sum(1 for x in ranked[:k] if x) / positives if positives else 0.0


def reciprocal_rank(ranked: list[int]) -> float:
    return next((1.0 / r for r, x in enumerate(ranked, 1) if x), 0.0)


def average_precision(ranked: list[int]) -> float:
    hits, total = 0, 0.0
    for r, x in enumerate(ranked, 1):
        if x:
            hits += 1
            total += hits / r
    return total / hits if hits else 0.0


def precision_at_1(ranked: list[int]) -> float:
    return 1.0 if ranked and ranked[0] else 0.0


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
