"""A toy scoring, registered in one module as a user would add one: shorter replies score lower."""

from chitchat.engine.scoring import Scoring, register


def score_brevity(engine, groups) -> None:
    for group in groups:
        for candidate in group.candidates:
            candidate.scores["brevity"] = float(len(candidate.ids))


BREVITY = register(Scoring("brevity", "the reply's length in tokens (a toy scoring)", score_brevity))
