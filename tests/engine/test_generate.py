"""The generation engine on random-weight tiny models: numerics, sampling controls, MMI, fallbacks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from chitchat.errors import ChitchatError
from chitchat.engine.engine import MAX_RESAMPLE, Engine
from chitchat.engine.fast import FastGPT2
from chitchat.engine.ranking import choose
from chitchat.engine.replies import Candidate
from chitchat.engine.sampler import nucleus_candidates
from chitchat.engine.scoring import Group
from chitchat.engine.settings import ReplySettings
from chitchat.model.gpt2 import build_model
from chitchat.tokens.tokenizer import CLS, PAD, SEP, SPACE, UNK

HISTORY = ["你好", "你好啊,今天过得怎么样", "还不错,刚下班"]


def ids_of(tokenizer, *tokens):
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def bias_logits(engine, bias: dict[int, float], after_step: int = 0):
    """Make the dialogue model favour some tokens (from decode step `after_step` on)."""
    original = engine.fast.logits
    calls = {"n": 0}

    def patched(h):
        out = original(h)
        if calls["n"] >= after_step:
            for i, b in bias.items():
                out[:, i] += b
        calls["n"] += 1
        return out

    engine.fast.logits = patched


# -- the fast forward against transformers -------------------------------------------------------

def test_fast_forward_matches_transformers(models):
    model = models[0]
    fast = FastGPT2(model)
    ids = torch.randint(5, 8000, (2, 40), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(40).expand(2, 40)
    with torch.no_grad():
        ref = model(ids).logits
    out = fast.logits(fast.hidden(ids, positions).reshape(80, -1)).view(2, 40, -1)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_cached_decoding_matches_full_forward(models):
    model = models[0]
    fast = FastGPT2(model)
    ids = torch.randint(5, 8000, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits[0]
    cache = fast.new_cache(1, 30)
    h = fast.hidden(ids[:, :20], torch.arange(20)[None], cache=cache, start=0)
    steps = [fast.logits(h[:, -1])]
    for t in range(20, 29):
        h = fast.hidden(ids[:, t:t + 1], torch.tensor([[t]]), cache=cache, start=t)
        steps.append(fast.logits(h[:, 0]))
    torch.testing.assert_close(torch.cat(steps), ref[19:29], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rows", [3, 12])  # 12 rows: oneDNN's products, where this PyTorch has them
def test_decode_step_matches_full_forward(models, rows):
    """`FastGPT2.step` (the lean one-token path the decode loop uses) against the full forward."""
    model = models[0]
    fast = FastGPT2(model)
    fast.prepare_decode(one_row=False)
    ids = torch.randint(5, 8000, (rows, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits
    buffer, cache = fast.borrow_cache(rows, 24)
    h = fast.hidden(ids[:, :16], torch.arange(16).expand(rows, 16), cache=cache, start=0)
    steps = [fast.logits(h[:, -1])]
    for t in range(16, 23):
        steps.append(fast.logits(fast.step(ids[:, t], torch.full((rows,), t), cache, t)))
    fast.return_cache(buffer)
    torch.testing.assert_close(torch.stack(steps, 1), ref[:, 15:23], atol=1e-4, rtol=1e-4)
    again, cache = fast.borrow_cache(2, 10)  # the kept buffer is handed out again
    assert again.data_ptr() == buffer.data_ptr() and cache[0].shape == (2, 2, fast.n_head, 10, fast.head_dim)


def test_hidden_skip_computes_only_the_wanted_positions(models):
    fast = FastGPT2(models[0])
    ids = torch.randint(5, 8000, (2, 20), generator=torch.Generator().manual_seed(4))
    positions = torch.arange(20).expand(2, 20)
    full = fast.hidden(ids, positions)
    torch.testing.assert_close(fast.hidden(ids, positions, skip=13), full[:, 13:], atol=1e-5, rtol=1e-5)
    mask = torch.ones(20, 20, dtype=torch.bool).tril()[None, None]
    torch.testing.assert_close(fast.hidden(ids, positions, mask=mask, skip=19), full[:, 19:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("onednn", [True, False])
def test_transposed_layout_matches_one_product(onednn, monkeypatch):
    """Every path of Fp32Linear (two blocks, oneDNN's packed weight, the plain product) gives the
    plain product, its residual form and its fused GELU form; without oneDNN too."""
    import chitchat.engine.quantize
    from chitchat.engine.quantize import _ONEDNN, Fp32Linear

    if not onednn:
        monkeypatch.setattr(chitchat.engine.quantize, "_ONEDNN", False)
    gelu = lambda y: F.gelu(y, approximate="tanh")  # noqa: E731
    for bias in (torch.randn(999), None):  # 999 outputs: one block, not two
        for weight in (torch.randn(999, 64), torch.randn(1000, 64)):
            b = None if bias is None else torch.randn(weight.shape[0])
            plain, laid = Fp32Linear(weight, b, out_in=True), Fp32Linear(weight, b, out_in=True)
            laid.set_transposed(laid.transposed())
            assert (laid.onednn is not None) == (_ONEDNN and onednn)
            for one_row in (False, True):
                laid.one_row = one_row
                for rows in (1, 5, 16, 40, 200):
                    x, res = torch.randn(rows, 64), torch.randn(rows, weight.shape[0])
                    torch.testing.assert_close(laid(x), plain(x), atol=1e-5, rtol=1e-5)
                    torch.testing.assert_close(laid.residual(x, res), plain(x) + res, atol=1e-5, rtol=1e-5)
                    torch.testing.assert_close(laid.gelu(x, gelu), gelu(plain(x)), atol=1e-5, rtol=1e-5)


def test_two_threads_decode_the_same(tokenizer, models):
    """With 2 threads one-row products take the (out, in) layout too: same greedy replies, same scores."""
    greedy = ReplySettings(top_k=1, candidates=1, max_len=10, min_len=10)
    one, two = Engine(models[0], tokenizer, models[1]), Engine(models[0], tokenizer, models[1], threads=2)
    a, b = one.reply(HISTORY, replace(greedy, seed=0)), two.reply(HISTORY, replace(greedy, seed=0))
    assert two.fast.head.one_row and not one.fast.head.one_row
    assert a.candidates[0].ids == b.candidates[0].ids
    assert a.candidates[0].scores["likelihood"] == pytest.approx(b.candidates[0].scores["likelihood"], rel=1e-4)
    assert a.candidates[0].scores.get("mmi") == pytest.approx(b.candidates[0].scores.get("mmi"), rel=1e-4)


def test_int8_linear_matches_fp32_and_its_residual_form():
    from chitchat.engine.quantize import Int8Linear

    weight, bias = torch.randn(300, 64) * 0.05, torch.randn(300)
    lin = Int8Linear(weight, bias, out_in=True)
    for rows in (1, 5, 40):
        x, res = torch.randn(rows, 64), torch.randn(rows, 300)
        ref = x @ weight.t() + bias
        assert (lin(x) - ref).abs().max() < 0.02 * ref.abs().max()
        torch.testing.assert_close(lin.residual(x, res), lin(x) + res, atol=1e-5, rtol=1e-5)


def test_int8_logits_stay_close_to_fp32(models):
    model = models[0]
    ids = torch.randint(5, 8000, (1, 30), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(30)[None]
    fp32, int8 = FastGPT2(model), FastGPT2(model, int8=True)
    a = fp32.logits(fp32.hidden(ids, pos)[0])
    b = int8.logits(int8.hidden(ids, pos)[0])
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


# -- sampling ------------------------------------------------------------------------------------

def test_same_seed_same_reply_and_candidates(engine):
    cfg = ReplySettings(candidates=4, max_len=12)
    a, b = engine.reply(HISTORY, replace(cfg, seed=11)), engine.reply(HISTORY, replace(cfg, seed=11))
    assert a.text == b.text and a.text
    assert [c.ids for c in a.candidates] == [c.ids for c in b.candidates]
    assert [c.scores.get("mmi") for c in a.candidates] == [c.scores.get("mmi") for c in b.candidates]
    c = engine.reply(HISTORY, replace(cfg, seed=12))
    assert [x.ids for x in c.candidates] != [x.ids for x in a.candidates]


def test_batched_left_padded_histories_match_one_at_a_time(engine):
    greedy = ReplySettings(top_k=1, candidates=2, max_len=10, min_len=10)
    histories = [["你好"], HISTORY, ["一个比较长的问题:周末你一般喜欢做什么呢?"]]
    together = engine.generate(histories, replace(greedy, seed=0))
    for history, row in zip(histories, together):
        alone = engine.generate([history], replace(greedy, seed=0))[0]
        assert [c.ids for c in row] == [c.ids for c in alone]
        assert [round(c.scores["likelihood"], 4) for c in row] == [round(c.scores["likelihood"], 4) for c in alone]
        assert row[0].ids == row[1].ids  # greedy: both candidates equal


def test_special_tokens_are_never_produced(engine, tokenizer):
    banned = ids_of(tokenizer, PAD, UNK, CLS)
    bias_logits(engine, {i: 50.0 for i in banned})
    for cand in engine.generate([HISTORY], ReplySettings(candidates=5, max_len=15, top_k=0, seed=3))[0]:
        assert not set(cand.ids) & set(banned)


def test_candidate_ends_at_sep_and_min_len_holds(engine, tokenizer):
    sep = tokenizer.convert_tokens_to_ids(SEP)
    bias_logits(engine, {sep: 50.0})
    cands = engine.generate([HISTORY], ReplySettings(candidates=3, min_len=4, max_len=20, seed=4))[0]
    for cand in cands:
        assert len(cand.ids) == 4 and cand.finished and sep not in cand.ids


def test_max_len_cuts_a_candidate(engine, tokenizer):
    sep = tokenizer.convert_tokens_to_ids(SEP)
    bias_logits(engine, {sep: -50.0})
    cands = engine.generate([HISTORY], ReplySettings(candidates=3, max_len=7, seed=5))[0]
    assert all(len(c.ids) == 7 and not c.finished for c in cands)


def test_reply_never_starts_with_a_space(engine, tokenizer):
    space = tokenizer.convert_tokens_to_ids(SPACE)
    bias_logits(engine, {space: 50.0})
    for cand in engine.generate([HISTORY], ReplySettings(candidates=5, max_len=3, seed=6))[0]:
        assert cand.ids[0] != space


def test_repetition_penalty_lowers_seen_tokens_with_negative_logits(engine):
    V = engine.fast.vocab_size
    logits = torch.zeros(1, V)
    seen_token, other = 100, 200
    logits[0, seen_token] = -2.0  # a negative logit: dividing it (GPT2-chitchat) would raise it
    logits[0, other] = 3.0
    before = logits.softmax(-1)[0, seen_token].item()
    cfg = ReplySettings(repetition_penalty=1.5, top_k=0, min_len=0, temperature=1.0)
    seen = torch.zeros(1, V)
    seen[0, seen_token] = -math.log(cfg.repetition_penalty)
    processed = logits.clone()
    engine.sampler.next_tokens(processed, 1, torch.zeros(1, 1, dtype=torch.long), seen, cfg,
                               torch.Generator().manual_seed(0))
    after = processed.softmax(-1)[0, seen_token].item()
    assert after < before
    assert after == pytest.approx(before / 1.5, rel=0.01)  # its probability weight divided by the penalty
    divided = logits.clone()
    divided[0, seen_token] /= cfg.repetition_penalty  # GPT2-chitchat's rule raises it
    assert divided.softmax(-1)[0, seen_token].item() > before


def test_strong_repetition_penalty_prevents_repeats(engine, tokenizer):
    favoured = ids_of(tokenizer, "哈", "好")
    bias_logits(engine, {i: 8.0 for i in favoured})
    plain = engine.generate([HISTORY], ReplySettings(candidates=4, max_len=12, min_len=12, seed=7))[0]
    assert any(len(set(c.ids)) < len(c.ids) for c in plain)
    strict = engine.generate([HISTORY], ReplySettings(candidates=4, max_len=12, min_len=12, repetition_penalty=1e9, seed=7))[0]
    assert all(len(set(c.ids)) == len(c.ids) for c in strict)


def test_no_repeat_ngram(engine, tokenizer):
    favoured = ids_of(tokenizer, "哈", "好")
    bias_logits(engine, {i: 8.0 for i in favoured})
    cands = engine.generate([HISTORY], ReplySettings(candidates=4, max_len=16, min_len=16, no_repeat_ngram_size=2, seed=8))[0]
    for c in cands:
        bigrams = list(zip(c.ids, c.ids[1:]))
        assert len(bigrams) == len(set(bigrams))


def test_top_k_1_and_tiny_top_p_are_greedy(engine):
    greedy = engine.generate([HISTORY], ReplySettings(top_k=1, candidates=1, max_len=8, min_len=8, seed=1))[0][0]
    nucleus = engine.generate([HISTORY], ReplySettings(top_k=0, top_p=1e-6, candidates=1, max_len=8, min_len=8, seed=2))[0][0]
    assert greedy.ids == nucleus.ids


def test_candidate_nll_is_the_dialogue_models_likelihood(engine, models, tokenizer):
    cand = engine.generate([HISTORY], ReplySettings(candidates=1, max_len=6, seed=9))[0][0]
    context = engine.context_ids([engine.encode(u) for u in HISTORY])
    seq = context + cand.ids + ([tokenizer.convert_tokens_to_ids(SEP)] if cand.finished else [])
    with torch.no_grad():
        logits = models[0](torch.tensor([seq])).logits[0]
    targets = torch.tensor(seq[len(context):])
    ref = F.cross_entropy(logits[len(context) - 1:-1], targets).item()
    assert cand.scores["likelihood"] == pytest.approx(ref, rel=1e-4)


def test_sampling_config_validation():
    for bad in (dict(temperature=-1), dict(top_p=1.5), dict(repetition_penalty=0.5), dict(max_len=0),
                dict(min_len=5, max_len=4), dict(candidates=0, retrieved=0), dict(top_k=-1)):
        with pytest.raises(ChitchatError):
            ReplySettings(**bad).validate()


# -- history bounds -----------------------------------------------------------------------------

def test_history_longer_than_the_model_positions(engine):
    history = [f"第{i}句话," + "很长的内容" * 20 for i in range(40)]  # ~4,000 tokens, the model has 256 positions
    cfg = ReplySettings(max_len=20)
    kept = engine.fit_history([engine.encode(u) for u in history], cfg.max_len)
    assert len(engine.context_ids(kept)) + cfg.max_len + 1 <= engine.n_positions
    assert kept[-1] == engine.encode(history[-1])
    assert engine.reply(history, replace(cfg, seed=0)).text


def test_a_10000_character_utterance_is_cut_to_fit(engine):
    long_line = "长" * 10_000
    kept = engine.fit_history([engine.encode(long_line)], 25)
    assert len(kept) == 1 and len(engine.context_ids(kept)) == engine.context_budget(25)
    assert engine.reply([long_line], ReplySettings(max_len=25, seed=0)).text


def test_emoji_and_latin_input(engine, tokenizer):
    ids = engine.encode("hello  world 😀!")
    assert tokenizer.convert_tokens_to_ids(UNK) in ids  # the emoji
    assert engine.decode(ids[:11]) == "hello world"
    assert engine.reply(["hello world 😀"], ReplySettings(max_len=10, seed=0)).text


# -- MMI and ranking ----------------------------------------------------------------------------

def test_mmi_scores_the_reversed_history_given_the_candidate(engine, models, tokenizer):
    reply = engine.reply(HISTORY, ReplySettings(candidates=5, max_len=10, seed=13))
    assert reply.ranking == "mmi"
    cls_id, sep_id = ids_of(tokenizer, CLS, SEP)
    reversed_history = []
    for u in reversed(HISTORY):
        reversed_history += engine.encode(u) + [sep_id]
    for cand in reply.candidates:
        head = [cls_id, *cand.ids, sep_id]
        seq = torch.tensor([head + reversed_history])
        with torch.no_grad():
            logits = models[1](seq).logits[0]
        ref = F.cross_entropy(logits[len(head) - 1:-1], seq[0, len(head):]).item()  # history tokens only
        assert cand.scores.get("mmi") == pytest.approx(ref, rel=1e-4)
    best = min(range(5), key=lambda i: reply.candidates[i].scores.get("mmi"))
    assert reply.chosen == best and reply.text == reply.candidates[best].text


def test_sequence_nll_in_groups_matches_one_at_a_time(models):
    """Many sequences are scored a group at a time (see FastGPT2.sequence_nll): same figures as alone."""
    fast = FastGPT2(models[1])
    gen = torch.Generator().manual_seed(5)
    sequences = [torch.randint(5, 8000, (int(n),), generator=gen).tolist()
                 for n in torch.randint(60, 120, (45,), generator=gen)]  # 2,048 tokens: groups of 17 or more
    starts = [int(s) for s in torch.randint(1, 50, (45,), generator=gen)]
    together = fast.sequence_nll(sequences, starts)
    alone = torch.cat([fast.sequence_nll([s], [t]) for s, t in zip(sequences, starts)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_mmi_survives_nan_and_inf_scores(engine, monkeypatch):
    scores = torch.tensor([float("nan"), 3.0, float("inf"), 2.5, float("nan")])
    monkeypatch.setattr(engine.mmi, "sequence_nll", lambda seqs, starts, pad: scores[:len(seqs)])
    reply = engine.reply(HISTORY, ReplySettings(candidates=5, max_len=8, min_len=2, seed=1))
    assert reply.ranking == "mmi" and reply.chosen == 3


def test_all_nan_mmi_falls_back_to_likelihood(engine, monkeypatch):
    monkeypatch.setattr(engine.mmi, "sequence_nll", lambda seqs, starts, pad: torch.full((len(seqs),), float("nan")))
    reply = engine.reply(HISTORY, ReplySettings(candidates=5, max_len=8, min_len=2, seed=1))
    assert reply.ranking == "likelihood" and reply.text
    assert reply.chosen == min(range(5), key=lambda i: reply.candidates[i].scores["likelihood"])


def test_empty_candidates_are_never_chosen():
    cands = [Candidate("", [], scores={"likelihood": 0.1, "mmi": 0.5}),
             Candidate("好的", [1], scores={"likelihood": 2.0, "mmi": 4.0}),
             Candidate(" ", [4], scores={"likelihood": 0.2, "mmi": 0.1})]
    assert choose(cands, "mmi") == (1, "mmi")
    assert choose(cands, "likelihood") == (1, "likelihood")
    assert choose([Candidate("", [], scores={"likelihood": 1.0})], "mmi") == (None, "none")


def test_all_empty_candidates_are_sampled_again(engine, tokenizer):
    sep = tokenizer.convert_tokens_to_ids(SEP)
    bias_logits(engine, {sep: 60.0})
    reply = engine.reply(HISTORY, ReplySettings(candidates=3, min_len=0, max_len=5, seed=2))
    assert reply.text.strip() and reply.attempts == MAX_RESAMPLE + 1
    assert all(len(c.ids) == 1 for c in reply.candidates)  # the last round forbids [SEP] first


def test_without_mmi_model_ranks_by_likelihood(tokenizer, models):
    engine = Engine(models[0], tokenizer)
    reply = engine.reply(HISTORY, ReplySettings(candidates=4, max_len=8, seed=3))
    assert reply.ranking == "likelihood" and all(c.scores.get("mmi") is None for c in reply.candidates)
    assert reply.chosen == min(range(4), key=lambda i: reply.candidates[i].scores["likelihood"])


def test_mmi_off_ranks_by_likelihood(engine):
    reply = engine.reply(HISTORY, ReplySettings(candidates=3, max_len=8, seed=3, ranking="likelihood"))
    assert reply.ranking == "likelihood" and all(c.scores.get("mmi") is None for c in reply.candidates)


def test_load_round_trip_and_vocabulary_mismatch(tmp_path, tokenizer, models):
    from chitchat.model.gpt2 import save_model
    from chitchat.tokens.tokenizer import build_tokenizer, tokenizer_tokens

    save_model(models[0], tokenizer, tmp_path / "dialogue")
    save_model(models[1], tokenizer, tmp_path / "mmi")
    engine = Engine.load(tmp_path / "dialogue", tmp_path / "mmi")
    assert engine.mmi is not None and engine.model_path == str(tmp_path / "dialogue")
    assert engine.reply(HISTORY, ReplySettings(max_len=5, seed=0)).text
    other = build_tokenizer(list(reversed(tokenizer_tokens(tokenizer)[5:])) + tokenizer_tokens(tokenizer)[:5])
    save_model(build_model(other, "tiny", seed=3), other, tmp_path / "other")
    with pytest.raises(ChitchatError, match="vocabulary differs"):
        Engine.load(tmp_path / "dialogue", tmp_path / "other")


def test_replies_for_several_histories_in_one_batch(engine):
    histories = [["你好"], HISTORY, ["周末你一般做什么?"]]
    cfg = ReplySettings(candidates=3, max_len=8)
    batch = engine.replies(histories, replace(cfg, seed=21))
    assert len(batch) == 3 and all(r.text and r.ranking == "mmi" for r in batch)
    assert [r.text for r in batch] == [r.text for r in engine.replies(histories, replace(cfg, seed=21))]
    for history, r in zip(histories, batch):  # MMI scores of the shared batch equal one-at-a-time scores
        utterances = engine.fit_history([engine.encode(u) for u in history], cfg.max_len)
        alone = [Candidate(c.text, c.ids, scores={"likelihood": c.scores["likelihood"]}) for c in r.candidates]
        engine.score([Group(utterances, alone)], ["mmi"])
        assert [a.scores.get("mmi") for a in alone] == pytest.approx([c.scores.get("mmi") for c in r.candidates], rel=1e-4)
        assert r.chosen == min(range(3), key=lambda i: r.candidates[i].scores.get("mmi"))


def test_top_p_keeps_the_smallest_set_holding_p():
    logits = torch.randn(3, 8000, generator=torch.Generator().manual_seed(0)) * 4
    order = logits.sort(-1, descending=True).indices
    full = logits.softmax(-1).gather(1, order)
    for p in (0.3, 0.9, 0.999):
        for first in (16, 256, 8000):
            probs, index = nucleus_candidates(logits, p, first)
            k = probs.shape[1]
            torch.testing.assert_close(probs, full[:, :k])
            assert torch.equal(index, order[:, :k])
            assert k == 8000 or bool((probs.sum(-1) >= p).all())


def test_a_model_producing_nan_is_an_error(engine):
    engine.fast.logits = lambda h: torch.full((h.shape[0], engine.fast.vocab_size), float("nan"))
    with pytest.raises(ChitchatError, match="invalid"):
        engine.reply(HISTORY, ReplySettings(max_len=4, seed=0))


# -- streaming -----------------------------------------------------------------------------------

def collect(steps):
    """Drive a streaming generation: (what each step yielded, the result)."""
    seen = []
    try:
        while True:
            seen.append(next(steps))
    except StopIteration as end:
        return seen, end.value


@pytest.mark.parametrize("cfg", [ReplySettings(candidates=3, max_len=12),
                                 ReplySettings(candidates=2, max_len=10, top_k=0, top_p=0.9, temperature=0.8,
                                                repetition_penalty=1.3, no_repeat_ngram_size=2)])
def test_streaming_and_batch_generation_give_the_same_candidates(engine, cfg):
    histories = [["你好"], HISTORY]
    batch = engine.generate(histories, replace(cfg, seed=5))
    steps, streamed = collect(engine.generate_stream(histories, replace(cfg, seed=5)))
    assert [[(c.ids, c.text, c.scores["likelihood"], c.finished) for c in row] for row in streamed] == \
        [[(c.ids, c.text, c.scores["likelihood"], c.finished) for c in row] for row in batch]
    assert all(len(s) == 2 * cfg.candidates for s in steps)
    for b in range(2 * cfg.candidates):  # the tokens yielded, step by step, are the candidate's
        cand = batch[b // cfg.candidates][b % cfg.candidates]
        toks = [s[b] for s in steps if s[b] is not None]
        assert toks == cand.ids + ([engine.sep_id] if cand.finished else [])


def test_streaming_and_batch_replies_are_the_same(engine):
    histories = [["你好"], HISTORY, ["周末你一般做什么?"]]
    for cfg, mmi in ((ReplySettings(candidates=1, max_len=15), False), (ReplySettings(candidates=4, max_len=8), True)):
        batch = engine.replies(histories, replace(cfg, seed=9, ranking="mmi" if mmi else "likelihood"))
        steps, streamed = collect(engine.replies_stream(histories, replace(cfg, seed=9, ranking="mmi" if mmi else "likelihood")))
        assert [(r.text, r.chosen, r.ranking, [(c.ids, c.scores["likelihood"], c.scores.get("mmi")) for c in r.candidates]) for r in streamed] == \
            [(r.text, r.chosen, r.ranking, [(c.ids, c.scores["likelihood"], c.scores.get("mmi")) for c in r.candidates]) for r in batch]
        if cfg.candidates == 1:  # one candidate: the reply is known as it is written
            for i, r in enumerate(batch):
                toks = [s.tokens[i][0] for s in steps if i in s.tokens and s.tokens[i][0] not in (None, engine.sep_id)]
                assert engine.decode(toks) == r.text


def test_a_history_given_up_leaves_the_batch(engine, monkeypatch):
    rows = []
    real_step = engine.fast.step
    monkeypatch.setattr(engine.fast, "step", lambda tok, *a, **k: rows.append(len(tok)) or real_step(tok, *a, **k))
    cfg = ReplySettings(candidates=2, max_len=12, min_len=12)
    steps = engine.replies_stream([["你好"], HISTORY], replace(cfg, seed=3))
    first = next(steps)
    assert set(first.tokens) == {0, 1}
    second = steps.send({0})  # history 0's client went away
    assert set(second.tokens) == {1}
    _, result = collect(steps)
    assert result[0] is None and result[1].text and len(result[1].candidates[0].ids) == 12
    assert rows == [2] * 11  # the first token came from the prefill; every step after decodes history 1's 2 rows
    rows.clear()
    collect(engine.replies_stream([["你好"], HISTORY], replace(cfg, seed=3)))
    assert rows == [4] * 11
