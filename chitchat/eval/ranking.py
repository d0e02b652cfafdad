"""Ranking a set of candidate replies by a score, and the retrieval metrics of those rankings.

Pure functions, no model: `chitchat.eval.scoring` computes the per-candidate numbers
(`CandidateScores`), the coherence and selection modes rank with every entry of `SCORINGS`.

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
from dataclasses import dataclass
from typing import Callable

from chitchat.engine.ranking import SCORINGS as ENGINE_SCORINGS
from chitchat.engine.ranking import effective_ranking


@dataclass
class CandidateScores:
    """What the models say about one candidate reply (mean negative log-likelihoods per token, lower
    is better). `nll`: the dialogue model's, reply and its [SEP] given the context; `nll_empty`: the
    same reply given no context (`[CLS]` alone); `mmi`: the MMI model's NLL of the reversed history
    given the reply, as `Engine.score_mmi_many` computes it (None without an MMI model)."""

    nll: float
    nll_empty: float
    mmi: float | None = None


def _chat(s: CandidateScores) -> float:
    """What the chat ranks by by default (chitchat.engine.ranking.DEFAULT_RANKING; without an MMI
    model, its other terms or likelihood); a candidate a needed model failed on comes last."""
    return effective_ranking(None, True, s.mmi is not None).score(s)


# name -> (candidate scores -> float, lower is better): the engine's scorings (likelihood, mmi, pmi),
# and the chat's own ranking. A new ranking (a weighted mix) is one entry.
SCORINGS: dict[str, Callable[[CandidateScores], float]] = {**ENGINE_SCORINGS, "chat": _chat}
NEEDS_MMI = {"mmi"}
SCORING_LABELS = {
    "likelihood": "likelihood per token (dialogue model)",
    "mmi": "MMI (reversed history given the reply)",
    "pmi": "PMI against the empty context",
    "chat": "the chat's ranking",
}


def scorings(has_mmi: bool) -> list[str]:
    """The scorings that apply: the MMI one only with an MMI model."""
    return [name for name in SCORINGS if has_mmi or name not in NEEDS_MMI]


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
