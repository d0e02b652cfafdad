"""Coherence: does a scoring pick the true next utterance out of a crowd?

For each test case, `negatives` distractor replies are drawn (with the seed) from the utterances of
OTHER dialogues of the same data; the true reply is ranked among the negatives + 1 by every scoring
that applies (`chitchat.eval.ranking.scorings`). Reported per scoring: Recall@1, Recall@2 and MRR, ties counted
against the true reply.
"""

from __future__ import annotations

import random

from chitchat.engine.engine import Engine
from chitchat.errors import ChitchatError
from chitchat.eval.cases import Case
from chitchat.engine.ranking import Ranking
from chitchat.eval.ranking import CHAT, mean, rank_of_true, scorings, values
from chitchat.eval.scoring import score_sets

TRIES_PER_DRAW = 20  # random draws per wanted distractor before listing what is left to draw from


def draw_negatives(dialogues: list[list[str]], cases: list[Case], n: int, seed: int) -> list[list[str]]:
    """`n` distinct distractors per case: utterances of dialogues other than the case's own, none
    equal to its reference. Each draw picks an utterance occurrence uniformly (a frequent utterance is
    drawn as often as it occurs). The same data, cases and seed give the same distractors. Too few
    utterances to draw from: a one-line ChitchatError."""
    if n <= 0:
        return [[] for _ in cases]
    pool = [(k, u) for k, utts in enumerate(dialogues) for u in utts]
    rng = random.Random(seed)
    out = []
    for c in cases:
        def usable(k: int, text: str) -> bool:
            return k != c.dialogue and text != c.reference and text not in seen

        picked: list[str] = []
        seen: set[str] = set()
        for _ in range(TRIES_PER_DRAW * n):
            if len(picked) == n or not pool:
                break
            k, text = pool[rng.randrange(len(pool))]
            if usable(k, text):
                picked.append(text)
                seen.add(text)
        if len(picked) < n:
            rest = sorted({text for k, text in pool if usable(k, text)})
            if len(rest) < n - len(picked):
                raise ChitchatError(
                    f"--negatives {n}: the other dialogues of the data hold only {len(picked) + len(rest)} distinct "
                    f"utterances to draw distractors for {c.source} from; give more dialogues or fewer --negatives (0: off)")
            picked += rng.sample(rest, n - len(picked))
        out.append(picked)
    return out


def coherence(engine: Engine, cases: list[Case], negatives: list[list[str]], chat: Ranking, chunk: int = 32,
              advance=None) -> tuple[dict, list[dict]]:
    """Rank each case's reference among its distractors by every scoring that applies and by the
    chat's ranking `chat`. Returns the summary ({scoring: {recall_at_1, recall_at_2, mrr}}) and
    each case's rank per scoring."""
    names = scorings(engine)
    sets = [(c.context, [c.reference, *negs]) for c, negs in zip(cases, negatives)]
    scored = score_sets(engine, sets, [n for n in names if n != CHAT] + chat.names, chunk, advance)
    ranks = [{name: rank_of_true(values(name, cands, chat), 0) for name in names} for cands in scored]
    summary = {}
    for name in names:
        r = [case[name] for case in ranks]
        summary[name] = {"recall_at_1": mean([float(x <= 1) for x in r]), "recall_at_2": mean([float(x <= 2) for x in r]),
                         "mrr": mean([1.0 / x for x in r])}
    return summary, ranks
