"""Large batches and long messages stay cheap to give up: a long message is read only as far as the
context reaches, a large prefill and a large scoring run in parts with a pause before each, and a
history given up in a pause is neither read nor scored any further (a server's client that left)."""

from __future__ import annotations

import copy
import random
from dataclasses import replace

import pytest

import chitchat.engine.engine as engine_module
from chitchat.engine.scoring import Group, score_parts
from chitchat.engine.settings import ReplySettings
from chitchat.tokens.tokenizer import text_encoder

HISTORY = ["你好", "你好啊,今天过得怎么样", "还不错,刚下班"]


@pytest.mark.parametrize("head", [(1, 32), (0, 3)])  # the shipped reading; a beginning too short (all is read)
def test_a_limit_gives_the_first_ids_of_the_whole_text(engine, monkeypatch, head):
    monkeypatch.setattr(engine_module, "PREFIX_CHARS", head[0])
    monkeypatch.setattr(engine_module, "PREFIX_SPARE", head[1])
    rng = random.Random(0)
    alphabet = list("今天天气怎么样好的 abcXYZ12 ,.!?。，\t\n　ａｂ…😀") + ["hello ", " world", "  "]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        for limit in (1, 3, 10, 50, 120):
            assert engine.encode(text, limit) == engine.encode(text)[:limit], (text, limit)


def test_the_engine_encodes_as_its_tokenizer_does(engine, tokenizer):
    """The engine reads normalised text with `text_encoder` (one step instead of the project
    normaliser's hundred): the ids of raw text through the tokenizer's own normaliser all the same."""
    assert engine.encoder is not tokenizer.backend_tokenizer  # the plain encoder: the project's normaliser
    rng = random.Random(1)
    alphabet = list("今天天气怎么样好的 abcXYZ12 ,.!?。，\t\n　ａｂ…😀\x07") + ["hello ", " world", "  ", "a b", "x  y"]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        assert engine.encode(text) == tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids, text


def test_a_tokenizer_from_elsewhere_keeps_its_own_normaliser(tokenizer):
    from tokenizers import Tokenizer, normalizers

    other = copy.deepcopy(tokenizer)
    other.backend_tokenizer.normalizer = normalizers.Lowercase()
    assert text_encoder(other) is other.backend_tokenizer
    assert isinstance(text_encoder(tokenizer), Tokenizer) and text_encoder(tokenizer) is not tokenizer.backend_tokenizer


def test_a_long_message_is_read_only_as_far_as_the_context_reaches(engine, monkeypatch):
    message = "今天天气怎么样" * 3000
    settings = ReplySettings(max_len=20)
    whole = engine.fit_history([engine.encode(message)], settings.max_len)
    read = []
    real = engine._encoding
    monkeypatch.setattr(engine, "_encoding", lambda text: read.append(len(text)) or real(text))
    assert engine.prompt([message], settings) == whole
    head = engine_module.PREFIX_CHARS * engine.context_budget(settings.max_len) + engine_module.PREFIX_SPARE
    assert len(read) == 1 and read[0] <= head < len(message)  # read once, and only its beginning


def test_score_parts_cut_a_batch_in_order_by_tokens():
    groups = [Group([[1] * 9], [_Cand(5), _Cand(5), _Cand(5)]), Group([[2] * 3], [_Cand(2)] * 4)]
    parts = score_parts(groups, 40)  # a candidate of group 0 costs 11 + 6 tokens, one of group 1 5 + 3
    assert [[(k, len(g.candidates)) for k, g in part] for part in parts] == [[(0, 2)], [(0, 1), (1, 2)], [(1, 2)]]
    assert [c for part in parts for _, g in part for c in g.candidates] == [c for g in groups for c in g.candidates]
    assert [[len(g.candidates) for _, g in p] for p in score_parts(groups, 1)] == [[1]] * 7  # one per part at least
    assert [[len(g.candidates) for _, g in p] for p in score_parts(groups, 10 ** 6)] == [[3, 4]]


class _Cand:
    def __init__(self, n: int):
        self.ids = [7] * n


@pytest.mark.parametrize("ranking", ["mmi", "pmi", "mmi+likelihood"])
def test_scoring_in_parts_gives_the_same_replies(engine, monkeypatch, ranking):
    histories = [["你好"], HISTORY, ["周末你一般做什么?"]]
    settings = ReplySettings(candidates=4, max_len=10, seed=7, ranking=ranking)
    whole = engine.replies(histories, settings)
    monkeypatch.setattr(engine_module, "SCORE_TOKENS", 1)  # each candidate scored on its own
    parts = engine.replies(histories, settings)
    assert [(r.text, r.chosen) for r in parts] == [(r.text, r.chosen) for r in whole]
    for a, b in zip(parts, whole):
        for ca, cb in zip(a.candidates, b.candidates):
            assert ca.scores.keys() == cb.scores.keys()
            assert all(ca.scores[k] == pytest.approx(cb.scores[k], rel=1e-4, abs=1e-4) for k in ca.scores)


def test_a_history_given_up_while_scored_is_scored_no_further(engine, monkeypatch):
    monkeypatch.setattr(engine_module, "SCORE_TOKENS", 1)
    scored = []
    real = engine.score
    monkeypatch.setattr(engine, "score", lambda groups, names: scored.append([g.history for g in groups]) or real(groups, names))
    settings = ReplySettings(candidates=2, max_len=4, min_len=4, seed=3, ranking="mmi")
    steps = engine.replies_stream([["你好"], HISTORY], settings)
    while next(steps).tokens:  # the sampled tokens, then a pause before scoring
        pass
    assert not scored
    next(steps)  # the first part is scored (history 0's first candidate); a pause
    assert len(scored) == 1
    try:
        steps.send({0})  # history 0's client went away
        while True:
            next(steps)
    except StopIteration as end:
        result = end.value
    assert result[0] is None and result[1].text and all("mmi" in c.scores for c in result[1].candidates)
    history_0 = engine.prompt(["你好"], settings)
    assert len(scored) == 3 and all(history_0 not in call for call in scored[1:])  # history 1's two candidates


def test_a_prefill_in_parts_pauses_before_the_first(engine, monkeypatch):
    monkeypatch.setattr(engine_module, "PREFILL_TOKENS", 1)  # one history per part
    read = []
    real = engine.fast.hidden
    monkeypatch.setattr(engine.fast, "hidden", lambda ids, *a, **k: read.append(len(ids)) or real(ids, *a, **k))
    settings = ReplySettings(candidates=2, max_len=6, seed=3)
    steps = engine.replies_stream([["你好"], HISTORY], settings)
    assert next(steps).tokens == {} and not read  # nothing read yet
    try:
        steps.send({0, 1})  # both clients went away
        while True:
            next(steps)
    except StopIteration as end:
        assert end.value == [None, None]
    assert not read
    alone = engine.replies([["你好"], HISTORY], settings)
    monkeypatch.setattr(engine_module, "PREFILL_TOKENS", 10 ** 6)
    assert [r.text for r in engine.replies([["你好"], HISTORY], replace(settings))] == [r.text for r in alone]
