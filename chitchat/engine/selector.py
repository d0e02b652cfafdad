"""The learned selector: a scoring (`selector`) trained to tell a reply that fits its context from a
fluent one that does not.

It is a logistic regression (scikit-learn, `chitchat/recipe/selector.py` trains it) over features
of a (context, candidate) pair: the built-in scorings (likelihood, MMI, PMI), the candidate's length
and whether it ended, how much it shares with the context (character bigrams), how much it repeats
itself, and how much it resembles the replies that follow contexts like this one in the response
index (when the engine has one). Its score is minus the log-odds that the candidate is the reply a
person gave, so lower is better, as for every scoring. It is stored as JSON beside the model
(`selector.json`: the feature names, the standardisation and the weights; no pickle), so anything
that computes the features can apply it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from chitchat.engine.scoring import Scoring, register
from chitchat.errors import ChitchatError

KIND, VERSION = "chitchat selector", 1
NEIGHBOURS = 20  # index pairs whose replies a candidate is compared with
FEATURES = ("likelihood", "mmi", "pmi", "log_chars", "finished", "overlap_last", "recall_last", "overlap_context",
            "repeat", "doubled", "echo", "question_last", "question_reply", "neighbour_max", "neighbour_mean")


def bigrams(text: str) -> set[str]:
    return {text[i:i + 2] for i in range(len(text) - 1)} or ({text} if text else set())


def _share(a: set, b: set) -> float:
    return len(a & b) / len(a) if a else 0.0


def text_features(context: list[str], reply: str, neighbours: list[str]) -> dict[str, float]:
    """The features of a pair that need no model: `context` utterances oldest first, `neighbours` the
    replies of the index pairs whose contexts are nearest."""
    last = context[-1] if context else ""
    r, l = bigrams(reply), bigrams(last)
    everything = set().union(*(bigrams(u) for u in context)) if context else set()
    chars = len(reply)
    near = [len(r & bigrams(n)) / math.sqrt(max(len(r), 1) * max(len(bigrams(n)), 1)) for n in neighbours]
    return {
        "log_chars": math.log1p(chars), "overlap_last": _share(r, l), "recall_last": _share(l, r),
        "overlap_context": _share(r, everything), "repeat": 1 - len(set(reply)) / chars if chars else 0.0,
        "doubled": sum(reply[i] == reply[i + 1] for i in range(chars - 1)) / max(chars, 1),
        "echo": float(bool(reply) and (reply in last or last in reply)),
        "question_last": float(any(q in last for q in "?？吗呢么")), "question_reply": float(any(q in reply for q in "?？吗呢")),
        "neighbour_max": max(near, default=0.0), "neighbour_mean": sum(near) / len(near) if near else 0.0,
    }


class Selector:
    """A trained selector: standardised features, one weight each."""

    def __init__(self, spec: dict, path: str = "selector.json"):
        self.spec, self.path = spec, path
        self.features = list(spec["features"])
        self.mean, self.scale = np.array(spec["mean"]), np.array(spec["scale"])
        self.coef, self.intercept = np.array(spec["coef"]), float(spec["intercept"])

    @classmethod
    def load(cls, path: str | Path) -> "Selector":
        p = Path(path)
        try:
            spec = json.loads(p.read_text(encoding="utf-8"))
            if spec.get("kind") != KIND or spec.get("version") != VERSION:
                raise ValueError("not a chitchat selector of this version")
            unknown = set(spec["features"]) - set(FEATURES)
            if unknown:
                raise ValueError(f"unknown features {sorted(unknown)}")
            selector = cls(spec, str(p))
            if not len(selector.features) == len(selector.mean) == len(selector.scale) == len(selector.coef):
                raise ValueError("features, mean, scale and coef differ in length")
        except FileNotFoundError:
            raise ChitchatError(f"{p}: no such selector file") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ChitchatError(f"{p}: not a usable selector ({e})") from None
        return selector

    def log_odds(self, rows: np.ndarray) -> np.ndarray:
        return ((rows - self.mean) / self.scale) @ self.coef + self.intercept


def feature_rows(engine, groups, names=FEATURES) -> list[np.ndarray]:
    """Each group's candidates' features (rows in `names` order); the scorings they use are computed
    first (`needs`)."""
    texts = [[engine.decode(u) for u in g.history] for g in groups]
    index = next((s.index for s in engine.sources if s.name == "retrieved"), None)
    hits = index.query_many(texts, k=NEIGHBOURS) if index is not None else [[] for _ in groups]
    out = []
    for g, context, near in zip(groups, texts, hits):
        neighbours = [h.reply for h in near]
        rows = []
        for c in g.candidates:
            f = text_features(context, c.text, [n for n in neighbours if n != c.text])
            f.update(likelihood=c.scores.get("likelihood", math.nan), mmi=c.scores.get("mmi", math.nan),
                     pmi=c.scores.get("pmi", math.nan), finished=float(c.finished))
            rows.append([f[n] for n in names])
        out.append(np.array(rows, dtype=np.float64).reshape(len(rows), len(names)))
    return out


def score_selector(engine, groups) -> None:
    selector = engine.selector
    for g, rows in zip(groups, feature_rows(engine, groups, selector.features)):
        scores = -selector.log_odds(np.nan_to_num(rows, nan=0.0, posinf=50.0, neginf=-50.0))
        for c, s in zip(g.candidates, scores):
            c.scores["selector"] = float(s)


register(Scoring("selector", "learned selector: minus the log-odds that the reply is the one a person gave",
                 score_selector, needs=("likelihood", "mmi", "pmi"),
                 available=lambda engine: getattr(engine, "selector", None) is not None and engine.mmi is not None))
