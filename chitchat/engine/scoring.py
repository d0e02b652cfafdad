"""The scorings a ranking can use, in one registry: each is a name, a batched scorer, what it needs.

A scoring puts one number per candidate into `Candidate.scores[name]`, lower is better (the built-in
ones are mean negative log-likelihoods per token: chitchat.engine.builtin_scorings). The ranking
syntax (chitchat.engine.ranking), eval's tables, the API's candidate lists and the chat's
`/candidates` all iterate `SCORINGS`, so a new scoring is one module that calls `register`:

    def score_length(engine, groups):
        for group in groups:
            for c in group.candidates:
                c.scores["length"] = -len(c.ids)

    register(Scoring("length", "minus the reply's length in tokens", score_length))

A scorer gets every group of one call at once (batch its model calls across them) and may skip a
candidate that already holds its score (sampled candidates come with their likelihood). Each
candidate's score is its own: a large batch is scored in parts (`score_parts`), and a group's
candidates may be split between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Group:
    """One context and its candidates: `history` the utterances the model sees (token ids, oldest
    first, fitted to the model's positions), `candidates` engine `Candidate`s."""

    history: list[list[int]]
    candidates: list = field(default_factory=list)


@dataclass(frozen=True)
class Scoring:
    name: str
    help: str  # what the number is, one line
    score: Callable  # (engine, list[Group]) -> None: sets c.scores[name] on every candidate
    needs: tuple[str, ...] = ()  # scorings whose values it reads (computed first)
    available: Callable = lambda engine: True  # whether an engine can compute it (e.g. it has an MMI model)


SCORINGS: dict[str, Scoring] = {}


def register(scoring: Scoring) -> Scoring:
    """Add a scoring (replacing one of the same name)."""
    if not scoring.name.isalpha() or not scoring.name.islower():
        raise ValueError(f"scoring name {scoring.name!r}: lower-case letters only (the ranking syntax reads them)")
    SCORINGS[scoring.name] = scoring
    return scoring


def register_scoring(scoring: Scoring) -> Scoring:
    """`register`, by its name in the public API (chitchat.register_scoring)."""
    return register(scoring)


def unregister(name: str) -> None:
    SCORINGS.pop(name, None)


def available(engine) -> list[str]:
    """The scorings `engine` can compute, in registration order."""
    return [name for name, s in SCORINGS.items() if s.available(engine)]


def with_needs(names) -> list[str]:
    """`names` and the scorings they need, each after what it needs, in registration order."""
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for need in SCORINGS[name].needs:
                add(need)
    for name in names:
        add(name)
    return [name for name in SCORINGS if name in wanted]


def score_groups(engine, groups: list[Group], names) -> None:
    """Compute scorings `names` (and what they need) for every candidate of every group, each scoring
    once over all the groups; empty candidates are left out."""
    groups = [Group(g.history, [c for c in g.candidates if not c.empty]) for g in groups]
    groups = [g for g in groups if g.candidates]
    if not groups:
        return
    for name in with_needs(names):
        SCORINGS[name].score(engine, groups)


def score_parts(groups: list[Group], tokens: int) -> list[list[tuple[int, Group]]]:
    """`groups` cut into parts of about `tokens` tokens each (a candidate costs its context and its
    own length), in order: each part a list of (the group's position, a Group of some of its
    candidates). An engine scores a part at a time, and may give histories up between parts."""
    parts: list[list[tuple[int, Group]]] = [[]]
    size = 0
    for k, g in enumerate(groups):
        context = sum(len(u) + 1 for u in g.history) + 1
        for c in g.candidates:
            if size and size + context + len(c.ids) + 1 > tokens:
                parts.append([])
                size = 0
            part = parts[-1]
            if not part or part[-1][0] != k:
                part.append((k, Group(g.history, [])))
            part[-1][1].candidates.append(c)
            size += context + len(c.ids) + 1
    return [p for p in parts if p]
