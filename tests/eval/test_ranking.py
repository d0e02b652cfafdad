"""Ranking metrics on hand-made rankings: Recall@k, MRR, MAP, P@1, pessimistic ties, R10@k only on
10 candidates, and the chat's scoring picking what `Engine.choose` picks."""

import math

import pytest

from chitchat.engine.engine import Engine
from chitchat.engine.ranking import DEFAULT_RANKING, choose, parse_ranking
from chitchat.engine.replies import Candidate
from chitchat.eval.ranking import (CHAT, average_precision, label, precision_at_1, rank_of_true, ranked_labels, recall_at,
                                   reciprocal_rank, scorings, values)
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


def test_scorings_table(tokenizer):
    from chitchat.model.gpt2 import build_model

    c = Candidate("好", [1], scores={"likelihood": 3.0, "pmi": -2.0, "mmi": 2.5})
    chat = parse_ranking(DEFAULT_RANKING)
    assert values("likelihood", [c], chat) == [3.0] and values("pmi", [c], chat) == [-2.0]
    assert values("mmi", [c], chat) == [2.5] and values(CHAT, [c], chat) == [2.5]
    assert math.isnan(values("mmi", [Candidate("好", [1])], chat)[0])
    model = build_model(tokenizer, "tiny", seed=1)
    assert scorings(Engine(model, tokenizer)) == ["likelihood", "pmi", CHAT]
    assert "mmi" in scorings(Engine(model, tokenizer, build_model(tokenizer, "tiny", seed=2)))
    assert not any("|" in label(name, chat) for name in ("likelihood", "mmi", "pmi", CHAT))  # table cells


@pytest.mark.parametrize("ranking", ["mmi", "likelihood", "mmi+0.5*pmi"])
def test_chat_scoring_picks_what_the_engine_chooses(ranking):
    nll = [2.0, 1.5, 3.0, 2.2]
    mmi = [4.0, 5.0, 3.5, 3.5]
    cands = [Candidate(f"r{i}", [i], scores={"likelihood": n, "mmi": m, "pmi": n - 1})
             for i, (n, m) in enumerate(zip(nll, mmi))]
    chosen, _ = choose(cands, ranking)
    scores = values(CHAT, cands, parse_ranking(ranking))
    assert min(range(len(scores)), key=lambda i: (scores[i], i)) == chosen
