"""How candidate replies are ranked, in one place: the chat, the evaluator and the server use it.

A ranking is a weighted sum of scorings, each a function of what the models say about a candidate
(mean negative log-likelihoods per token, lower is better):

- `likelihood`: the dialogue model's NLL of the reply (its closing [SEP] included) given the context;
- `mmi`: the MMI model's NLL of the reversed history given the reply (`Engine.score_mmi_many`);
- `pmi`: the dialogue model's NLL of the reply given the context minus its NLL given no context
  (`[CLS] reply [SEP]`): minus the pointwise mutual information per token, how much the context makes
  the reply likelier. A reply that fits any context ("我不知道") gains nothing from it.

A ranking setting is written `mmi`, `pmi`, `likelihood` or a mix such as `mmi+0.5*pmi` (positive
weights, each scoring at most once). The scorings take any object with the attributes `nll`,
`nll_empty` and `mmi` (an engine `Candidate`, the evaluator's `CandidateScores`); a score that is
missing (None) or not finite ranks the candidate after every candidate with a finite score.

Choosing (`choose`): never an empty candidate; a finished candidate (ended with [SEP]) before one
cut at the length cap; among those, the lowest finite ranking score; when no candidate has one, the
dialogue model's likelihood decides.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Protocol

from chitchat.errors import ChitchatError


class Scored(Protocol):
    nll: float
    nll_empty: float | None
    mmi: float | None


def _value(x: float | None) -> float:
    return math.nan if x is None else x


# name -> (candidate -> float, lower is better)
SCORINGS: dict[str, Callable[[Scored], float]] = {
    "likelihood": lambda c: _value(c.nll),
    "mmi": lambda c: _value(c.mmi),
    "pmi": lambda c: _value(c.nll) - _value(c.nll_empty),
}
SCORING_HELP = {
    "likelihood": "dialogue model's NLL per token of the reply given the context",
    "mmi": "MMI model's NLL per token of the reversed history given the reply",
    "pmi": "NLL of the reply given the context minus given no context (-PMI per token)",
}
# the chat's default, chosen by bench/ranking_sweep.py on CPED valid (models/default/RANKING_SWEEP.md)
DEFAULT_RANKING = "mmi"
SYNTAX = "a scoring (likelihood, mmi, pmi) or a sum of weighted ones such as mmi+0.5*pmi"

_TERM = re.compile(r"^(?:(?P<w>\d+(?:\.\d*)?|\.\d+)\s*\*?\s*)?(?P<name>[a-z]+)$")


@dataclass(frozen=True)
class Ranking:
    """A weighted sum of scorings; `str()` writes it back in the syntax `parse_ranking` reads."""

    terms: tuple[tuple[float, str], ...]

    @property
    def needs_mmi(self) -> bool:
        return any(name == "mmi" for _, name in self.terms)

    @property
    def needs_empty(self) -> bool:
        """Whether the candidates need their NLL given no context (PMI)."""
        return any(name == "pmi" for _, name in self.terms)

    def score(self, candidate: Scored) -> float:
        """The ranking's score of one candidate, lower is better; NaN when a score it needs is missing."""
        return sum(w * SCORINGS[name](candidate) for w, name in self.terms)

    def without_mmi(self) -> "Ranking":
        """This ranking with no MMI model: its other terms, else likelihood."""
        rest = tuple(t for t in self.terms if t[1] != "mmi")
        return Ranking(rest) if rest else LIKELIHOOD

    def __str__(self) -> str:
        return "+".join(name if w == 1 else f"{w:g}*{name}" for w, name in self.terms)


LIKELIHOOD = Ranking(((1.0, "likelihood"),))


def parse_ranking(text: "str | Ranking") -> Ranking:
    """`mmi`, `pmi`, `likelihood`, `mmi+0.5*pmi`, `2*mmi + pmi`, ... -> Ranking. Bad text: a one-line
    ChitchatError."""
    if isinstance(text, Ranking):
        return text
    spec = str(text).strip().lower()
    if not spec:
        raise ChitchatError(f"ranking is empty: give {SYNTAX}")
    terms: list[tuple[float, str]] = []
    for part in spec.split("+"):
        m = _TERM.match(part.strip())
        if m is None:
            raise ChitchatError(f"ranking {text!r}: cannot read {part.strip()!r}; give {SYNTAX}")
        name = m["name"]
        if name not in SCORINGS:
            raise ChitchatError(f"ranking {text!r}: unknown scoring {name!r} (scorings: {', '.join(SCORINGS)})")
        if any(n == name for _, n in terms):
            raise ChitchatError(f"ranking {text!r}: {name} appears twice")
        weight = 1.0 if m["w"] is None else float(m["w"])
        if not weight > 0:
            raise ChitchatError(f"ranking {text!r}: the weight of {name} must be > 0")
        terms.append((weight, name))
    return Ranking(tuple(terms))


def effective_ranking(ranking: "str | Ranking | None", use_mmi: bool = True, has_mmi: bool = True) -> Ranking:
    """The ranking replies are chosen by. `ranking` None: the default. MMI off (`use_mmi` False):
    likelihood, as before rankings could be mixed. No MMI model: the ranking without its MMI term."""
    if not use_mmi:
        return LIKELIHOOD
    r = parse_ranking(DEFAULT_RANKING if ranking is None else ranking)
    return r if has_mmi or not r.needs_mmi else r.without_mmi()


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def choose(candidates: list, ranking: "str | Ranking") -> tuple[int | None, str]:
    """Index of the best candidate and the ranking used (its text, or "likelihood" when no candidate
    has a finite score under it); (None, "none") when every candidate is empty. Candidates are
    engine `Candidate`s: `empty`, `finished` and the scores of `SCORINGS`."""
    r = parse_ranking(ranking)
    usable = [i for i, c in enumerate(candidates) if not c.empty]
    if not usable:
        return None, "none"
    pool = [i for i in usable if candidates[i].finished] or usable  # whole replies first
    scores = {i: r.score(candidates[i]) for i in pool}
    scored = [i for i in pool if _finite(scores[i])]
    if scored:
        return min(scored, key=lambda i: scores[i]), str(r)
    finite = [i for i in pool if _finite(candidates[i].nll)] or pool
    return min(finite, key=lambda i: candidates[i].nll), "likelihood"
