"""How candidate replies are ranked, in one place: the chat, the evaluator and the server use it.

A ranking is a weighted sum of scorings (chitchat.engine.scoring.SCORINGS: `likelihood`, `mmi`,
`pmi` built in, and any registered), each a number per candidate in `Candidate.scores`, lower is
better. It is written `mmi`, `pmi`, `likelihood` or a mix such as `mmi+0.5*pmi` (positive weights,
each scoring at most once); `str()` writes it back in a form `parse_ranking` reads. A score that is
missing or not finite ranks the candidate after every candidate with a finite score. On an engine
that cannot compute a term (no MMI model), the ranking is used without it (`usable`).

Choosing (`choose`): never an empty candidate; a finished candidate (ended with [SEP]) before one
cut at the length cap; among those, the lowest finite ranking score; when no candidate has one, the
dialogue model's likelihood decides.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from chitchat.engine import builtin_scorings, retrieved, selector  # noqa: F401  (register the built-in scorings)
from chitchat.engine.scoring import SCORINGS, available
from chitchat.errors import ChitchatError

# the chat's default: a retrieved reply before any sampled one (a sampled candidate has no retrieval
# score), by the index's similarity plus MMI; with no index, MMI (chosen by bench/ranking_sweep.py on
# CPED valid, models/default/RANKING_SWEEP.md). With the default one retrieved candidate that is the
# index's first choice, judged far more often sensible than any sampled reply (models/default/README.md).
DEFAULT_RANKING = "retrieval+mmi"
SYNTAX = "a scoring (likelihood, mmi, pmi, ...) or a sum of weighted ones such as mmi+0.5*pmi"

_TERM = re.compile(r"^(?:(?P<w>(?:\d+(?:\.\d*)?|\.\d+)(?:e-?\d+)?)\s*\*?\s*)?(?P<name>[a-z]+)$")


@dataclass(frozen=True)
class Ranking:
    """A weighted sum of scorings; `str()` writes it back in the syntax `parse_ranking` reads."""

    terms: tuple[tuple[float, str], ...]

    @property
    def names(self) -> list[str]:
        return [name for _, name in self.terms]

    def score(self, candidate) -> float:
        """The ranking's score of one candidate, lower is better; NaN when a score it needs is missing."""
        return sum(w * candidate.scores.get(name, math.nan) for w, name in self.terms)

    def usable(self, engine) -> "Ranking":
        """This ranking on `engine`: the terms it can compute, else likelihood."""
        can = set(available(engine))
        rest = tuple(t for t in self.terms if t[1] in can)
        return Ranking(rest) if rest else LIKELIHOOD

    def __str__(self) -> str:
        return "+".join(name if w == 1 else f"{_weight(w)}*{name}" for w, name in self.terms)


def _weight(w: float) -> str:
    """A weight in plain decimals (no exponent: `1e+06` would read as two terms)."""
    text = f"{w:.12f}".rstrip("0").rstrip(".")
    return text if float(text) == w else repr(w).replace("e+", "e")


LIKELIHOOD = Ranking(((1.0, "likelihood"),))


def parse_ranking(text: "str | Ranking") -> Ranking:
    """`mmi`, `pmi`, `likelihood`, `mmi+0.5*pmi`, `2*mmi + pmi`, `1e-5*pmi+mmi`, ... -> Ranking. Bad
    text: a one-line ChitchatError."""
    if isinstance(text, Ranking):
        return text
    spec = str(text).strip().lower()
    if not spec:
        raise ChitchatError(f"ranking is empty: give {SYNTAX}")
    terms: list[tuple[float, str]] = []
    for part in re.split(r"(?<![0-9]e)\+", spec):  # "1e+6*mmi" keeps its exponent
        m = _TERM.match(part.strip().replace("e+", "e"))
        if m is None:
            raise ChitchatError(f"ranking {text!r}: cannot read {part.strip()!r}; give {SYNTAX}")
        name = m["name"]
        if name not in SCORINGS:
            raise ChitchatError(f"ranking {text!r}: unknown scoring {name!r} (scorings: {', '.join(SCORINGS)})")
        if any(n == name for _, n in terms):
            raise ChitchatError(f"ranking {text!r}: {name} appears twice")
        weight = 1.0 if m["w"] is None else float(m["w"])
        if not (weight > 0 and math.isfinite(weight)):
            raise ChitchatError(f"ranking {text!r}: the weight of {name} must be a number > 0")
        terms.append((weight, name))
    return Ranking(tuple(terms))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def choose(candidates: list, ranking: "str | Ranking") -> tuple[int | None, str]:
    """Index of the best candidate and the ranking used (its text, or "likelihood" when no candidate
    has a finite score under it); (None, "none") when every candidate is empty. Candidates are
    engine `Candidate`s: `empty`, `finished` and `scores`."""
    r = parse_ranking(ranking)
    usable = [i for i, c in enumerate(candidates) if not c.empty]
    if not usable:
        return None, "none"
    pool = [i for i in usable if candidates[i].finished] or usable  # whole replies first
    scores = {i: r.score(candidates[i]) for i in pool}
    scored = [i for i in pool if _finite(scores[i])]
    if scored:
        return min(scored, key=lambda i: scores[i]), str(r)
    nll = {i: candidates[i].scores.get("likelihood", math.nan) for i in pool}
    finite = [i for i in pool if _finite(nll[i])] or pool
    return min(finite, key=lambda i: nll[i] if _finite(nll[i]) else math.inf), "likelihood"


def ranked(candidates: list, chosen: int | None, ranking: "str | Ranking") -> list[int]:
    """Candidate indices best first: the chosen one, then the others by `ranking`; empty ones last."""
    r = parse_ranking(ranking)

    def key(i: int):
        score = r.score(candidates[i])
        return (i != chosen, candidates[i].empty, not _finite(score), score if _finite(score) else 0.0)
    return sorted(range(len(candidates)), key=key)
