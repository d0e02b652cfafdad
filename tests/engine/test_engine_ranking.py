"""Candidate ranking (chitchat.engine.ranking): the setting's syntax, each scoring, finished replies
first, PMI scores against teacher-forced likelihoods, and the engine choosing by a ranking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from chitchat.engine.engine import Engine
from chitchat.engine.ranking import DEFAULT_RANKING, LIKELIHOOD, Ranking, choose, parse_ranking
from chitchat.engine.replies import Candidate
from chitchat.engine.scoring import Group
from chitchat.engine.settings import ReplySettings
from chitchat.errors import ChitchatError

HISTORY = ["你好", "你好啊,今天过得怎么样", "还不错,刚下班"]


def cand(text="好的", nll=2.0, mmi=None, nll_empty=None, finished=True) -> Candidate:
    scores = {"likelihood": nll}
    if mmi is not None:
        scores["mmi"] = mmi
    if nll_empty is not None:
        scores["pmi"] = nll - nll_empty
    return Candidate(text, [1] * len(text), finished=finished, scores=scores)


def S(**kw) -> ReplySettings:
    return ReplySettings(**kw)


# -- the setting ---------------------------------------------------------------------------------

def test_parse_ranking_reads_names_weights_and_mixes():
    assert parse_ranking("mmi").terms == ((1.0, "mmi"),)
    assert parse_ranking(" PMI ").terms == ((1.0, "pmi"),)
    assert parse_ranking("mmi+0.5*pmi").terms == ((1.0, "mmi"), (0.5, "pmi"))
    assert parse_ranking("2 * mmi + .25pmi + likelihood").terms == ((2.0, "mmi"), (0.25, "pmi"), (1.0, "likelihood"))
    for text in ("mmi", "pmi", "likelihood", "mmi+0.5*pmi", "2*mmi+0.25*pmi+likelihood"):
        assert str(parse_ranking(text)) == text  # written back as read
        assert parse_ranking(str(parse_ranking(text))) == parse_ranking(text)
    assert parse_ranking(DEFAULT_RANKING)  # the default is a valid setting


@pytest.mark.parametrize("bad, message", [
    ("", "empty"), ("mmi+", "cannot read"), ("bleu", "unknown scoring 'bleu'"), ("mmi+mmi", "appears twice"),
    ("0*pmi", "must be a number > 0"), ("-1*pmi", "cannot read"), ("mmi*pmi", "cannot read"), ("mmi,pmi", "cannot read"),
])
def test_bad_rankings_are_one_line_errors(bad, message):
    with pytest.raises(ChitchatError, match=message) as e:
        parse_ranking(bad)
    assert "\n" not in str(e.value)


def test_weights_are_written_back_in_a_form_the_parser_reads():
    for text in ("mmi+0.00001*pmi", "1000000*mmi", "1e-5*pmi+mmi", "1e+6*mmi", "1E6*mmi", "0.1*mmi+0.2*pmi"):
        r = parse_ranking(text)
        assert parse_ranking(str(r)) == r and "e" not in str(r).replace("likelihood", "").replace("mmi", "").replace("pmi", "")
    assert str(parse_ranking("mmi+0.00001*pmi")) == "mmi+0.00001*pmi"
    assert str(parse_ranking("1000000*mmi")) == "1000000*mmi"


def test_no_mmi_model_drops_the_mmi_term(tokenizer, models):
    without = Engine(models[0], tokenizer)
    assert without.ranking_for("mmi+0.5*pmi") == Ranking(((0.5, "pmi"),))
    assert without.ranking_for("mmi") == LIKELIHOOD
    with_mmi = Engine(models[0], tokenizer, models[1])
    assert with_mmi.ranking_for("mmi+0.5*pmi") == parse_ranking("mmi+0.5*pmi")
    assert with_mmi.ranking_for(DEFAULT_RANKING) == parse_ranking("mmi")  # no index: the default is MMI


# -- scorings and choosing -----------------------------------------------------------------------

def test_each_scoring_on_hand_made_candidates():
    cands = [cand("一", nll=1.0, mmi=5.0, nll_empty=1.5),   # likely, poor MMI, PMI -0.5
             cand("二", nll=3.0, mmi=2.0, nll_empty=3.2),   # best MMI, PMI -0.2
             cand("三", nll=2.0, mmi=4.0, nll_empty=4.0)]   # best PMI (-2.0)
    assert choose(cands, "likelihood") == (0, "likelihood")
    assert choose(cands, "mmi") == (1, "mmi")
    assert choose(cands, "pmi") == (2, "pmi")
    assert parse_ranking("pmi").score(cands[2]) == pytest.approx(-2.0)
    # mmi + 0.5*pmi: 4.75, 1.9, 3.0
    assert [parse_ranking("mmi+0.5*pmi").score(c) for c in cands] == pytest.approx([4.75, 1.9, 3.0])
    assert choose(cands, "mmi+0.5*pmi") == (1, "mmi+0.5*pmi")
    assert choose(cands, "mmi+2*pmi") == (2, "mmi+2*pmi")  # 4.0, 1.6, 0.0


def test_finished_candidates_come_before_cut_ones():
    cut = cand("我一个人在一", nll=0.5, mmi=0.5, nll_empty=3.0, finished=False)
    whole = cand("好的", nll=3.0, mmi=4.0, nll_empty=3.1)
    for ranking in ("likelihood", "mmi", "pmi", "mmi+0.5*pmi"):
        assert choose([cut, whole], ranking)[0] == 1
        assert choose([cut, cand("", [], finished=True)], ranking)[0] == 0  # no whole non-empty one: the cut one


def test_missing_or_invalid_scores_rank_last_and_empty_is_never_chosen():
    cands = [cand("一", nll=1.0, mmi=None), cand("二", nll=2.0, mmi=math.nan), cand("三", nll=3.0, mmi=4.0),
             cand(" ", nll=0.1, mmi=0.1)]
    assert choose(cands, "mmi") == (2, "mmi")
    assert choose(cands[:2], "mmi") == (0, "likelihood")  # no finite MMI score: the most likely
    assert choose(cands[:2], "pmi") == (0, "likelihood")  # not scored without context
    assert choose([cand("")], "mmi") == (None, "none")


# -- the engine ----------------------------------------------------------------------------------

def teacher_forced_nll(model, prefix: list[int], target: list[int]) -> float:
    seq = torch.tensor([prefix + target])
    with torch.no_grad():
        logits = model(seq).logits[0]
    return F.cross_entropy(logits[len(prefix) - 1:-1], seq[0, len(prefix):]).item()


def test_pmi_is_the_difference_of_two_teacher_forced_nlls(engine, models):
    reply = engine.reply(HISTORY, S(candidates=4, max_len=6, seed=4, ranking="pmi"))
    assert reply.ranking == "pmi"
    context = engine.context_ids([engine.encode(u) for u in HISTORY])
    for c in reply.candidates:
        target = c.ids + ([engine.sep_id] if c.finished else [])
        given_context = teacher_forced_nll(models[0], context, target)
        given_nothing = teacher_forced_nll(models[0], [engine.cls_id], target)
        assert c.scores["likelihood"] == pytest.approx(given_context, rel=1e-4)
        assert parse_ranking("pmi").score(c) == pytest.approx(given_context - given_nothing, rel=1e-3, abs=1e-4)
    assert reply.chosen == choose(reply.candidates, "pmi")[0]


def test_scores_are_computed_only_when_the_ranking_needs_them(engine):
    mmi = engine.reply(HISTORY, S(candidates=3, max_len=6, seed=4, ranking="mmi"))
    assert all(set(c.scores) == {"likelihood", "mmi"} for c in mmi.candidates)
    pmi = engine.reply(HISTORY, S(candidates=3, max_len=6, seed=4, ranking="pmi"))
    assert all(set(c.scores) == {"likelihood", "pmi"} for c in pmi.candidates)
    mix = engine.reply(HISTORY, S(candidates=3, max_len=6, seed=4, ranking="mmi+0.5*pmi"))
    assert mix.ranking == "mmi+0.5*pmi" and all(set(c.scores) == {"likelihood", "mmi", "pmi"} for c in mix.candidates)
    assert [c.ids for c in mix.candidates] == [c.ids for c in pmi.candidates]  # ranking never changes the sampling
    assert all(c.source == "sampled" for c in mix.candidates)
    assert mix.chosen == min(range(3), key=lambda i: (not mix.candidates[i].finished,
                                                      mix.candidates[i].scores["mmi"] + 0.5 * mix.candidates[i].scores["pmi"]))


def test_same_seed_same_reply_under_every_ranking(engine):
    for ranking in ("likelihood", "mmi", "pmi", "mmi+0.5*pmi"):
        cfg = S(candidates=4, max_len=8, seed=11, ranking=ranking)
        a = engine.reply(HISTORY, cfg)
        b = engine.reply(HISTORY, cfg)
        assert (a.text, a.chosen, a.ranking) == (b.text, b.chosen, b.ranking)


def test_batched_pmi_equals_one_at_a_time(engine):
    histories = [["你好"], HISTORY]
    batch = engine.replies(histories, S(candidates=3, max_len=6, seed=2, ranking="pmi"))
    for h, r in zip(histories, batch):
        alone = [Candidate(c.text, c.ids, finished=c.finished, scores={"likelihood": c.scores["likelihood"]})
                 for c in r.candidates]
        for a in alone:
            engine.score([Group([engine.encode(u) for u in h], [a])], ["pmi"])
        assert [a.scores["pmi"] for a in alone] == pytest.approx([c.scores["pmi"] for c in r.candidates], rel=1e-4, abs=1e-5)


def test_without_mmi_model_a_mix_ranks_by_its_other_terms(tokenizer, models):
    engine = Engine(models[0], tokenizer)
    reply = engine.reply(HISTORY, S(candidates=3, max_len=6, seed=3, ranking="mmi+0.5*pmi"))
    assert reply.ranking == "0.5*pmi" and all("mmi" not in c.scores for c in reply.candidates)
    off = Engine(models[0], tokenizer, models[1]).reply(HISTORY, S(candidates=3, max_len=6, seed=3, ranking="likelihood"))
    assert off.ranking == "likelihood"  # MMI off is the ranking likelihood


def test_a_bad_ranking_fails_before_sampling(engine):
    with pytest.raises(ChitchatError, match="unknown scoring"):
        engine.reply(HISTORY, S(max_len=4, seed=1, ranking="bleu"))
