"""Ranking metrics on hand-made rankings: Recall@k, MRR, MAP, P@1, pessimistic ties, R10@k only on
10 candidates, and the chat's scoring picking what `Engine.choose` picks."""

import math

import pytest

from chitchat.engine.engine import Engine
from chitchat.engine.replies import Candidate
from chitchat.eval.ranking import (SCORING_LABELS, SCORINGS, CandidateScores, average_precision, precision_at_1, rank_of_true,
                                   ranked_labels, recall_at, reciprocal_rank, scorings)
from chitchat.eval.selection import selection_metrics


def test_metrics_of_one_ranked_list_by_hand():
    ranked = [0, 1, 0, 1, 0]  # true replies at ranks 2 and 4
    assert recall_at(ranked, 1) == 0
    assert recall_at(ranked, 2) == pytest.approx(0.5)
    assert recall_at(ranked, 5) == pytest.approx(1.0)
    assert reciprocal_rank(ranked) == pytest.approx(0.5)
    assert average_precision(ranked) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert precision_at_1(ranked) == 0 and precision_at_1([1, 0]) == 1
    assert average_precision([1, 1, 0]) == pytest.approx(1.0)


def test_ties_count_against_the_true_reply():
    assert rank_of_true([1.0, 1.0, 2.0], 0) == 2  # tied with a distractor: ranked below it
    assert rank_of_true([0.5, 1.0, 1.0], 0) == 1
    assert rank_of_true([3.0, 1.0, 2.0], 0) == 3
    assert rank_of_true([math.nan, 1.0, 2.0], 0) == 3  # a score that is not a number ranks last
    assert rank_of_true([1.0, math.nan, math.inf], 0) == 1
    assert rank_of_true([math.nan, math.nan], 0) == 2
    # selection: wrong candidates first among equal scores, whatever the file order
    assert ranked_labels([1.0, 1.0, 0.5], [1, 0, 0]) == [0, 0, 1]
    assert ranked_labels([0.2, 1.0, 0.2], [0, 0, 1]) == [0, 1, 0]


def test_r10_needs_ten_candidates():
    ten = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    three = [0, 1, 0]
    m = selection_metrics([ten, three])
    assert m["r10_at_1"] == 1.0 and m["r10_at_2"] == 1.0  # only the 10-candidate list counts for R10@k
    assert m["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert m["p_at_1"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx((1 + 1 / 2) / 2)
    none = selection_metrics([three])
    assert none["r10_at_1"] is None and none["map"] == pytest.approx(0.5)


def test_scorings_table():
    s = CandidateScores(nll=3.0, nll_empty=5.0, mmi=2.5)
    assert SCORINGS["likelihood"](s) == 3.0
    assert SCORINGS["pmi"](s) == -2.0  # the context made the reply 2 nats per token likelier
    assert SCORINGS["mmi"](s) == 2.5 and SCORINGS["chat"](s) == 2.5
    no_mmi = CandidateScores(nll=3.0, nll_empty=5.0)
    assert SCORINGS["chat"](no_mmi) == 3.0
    assert scorings(False) == ["likelihood", "pmi", "chat"] and "mmi" in scorings(True)
    assert set(SCORING_LABELS) == set(SCORINGS) and not any("|" in x for x in SCORING_LABELS.values())  # table cells


@pytest.mark.parametrize("use_mmi", [True, False])
def test_chat_scoring_picks_what_engine_choose_picks(use_mmi):
    nll = [2.0, 1.5, 3.0, 2.2]
    mmi = [4.0, 5.0, 3.5, 3.5]
    cands = [Candidate(f"r{i}", [i], n, m if use_mmi else None) for i, (n, m) in enumerate(zip(nll, mmi))]
    chosen, _ = Engine.choose(cands, use_mmi)
    scores = [SCORINGS["chat"](CandidateScores(c.nll, 0.0, c.mmi)) for c in cands]
    assert min(range(len(scores)), key=lambda i: (scores[i], i)) == chosen
