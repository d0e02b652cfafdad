"""Evaluation metrics on hand-checked examples (BLEU values computed by hand from its definition)."""

import math

import pytest

from chitchat.eval.metrics import bleu, char_f1, distinct, perplexity, repeats_3gram, reply_metrics, tfidf_cosine


def test_perfect_reply_scores_full_marks():
    hyp = ref = "今天天气很好啊"
    m = reply_metrics([hyp], [ref])
    assert m["bleu1_char"] == pytest.approx(100)
    assert m["bleu4_char"] == pytest.approx(100)
    assert m["f1_char"] == pytest.approx(1.0)
    assert m["tfidf_cosine"] == pytest.approx(1.0)
    assert m["empty_rate"] == 0 and m["repeat_3gram_rate"] == 0
    assert m["avg_len_chars"] == 7


def test_reply_sharing_nothing_scores_zero():
    m = reply_metrics(["哈哈"], ["你好呀"])
    assert m["bleu1_char"] == 0 and m["bleu4_word"] == 0
    assert m["f1_char"] == 0 and m["tfidf_cosine"] == 0


def test_empty_reply():
    m = reply_metrics(["", "你好"], ["我很好", "你好"])
    assert m["empty_rate"] == 0.5
    assert m["f1_char"] == pytest.approx(0.5)  # 0 for the empty reply, 1 for the perfect one
    assert m["avg_len_chars"] == 1


def test_bleu1_by_hand():
    # hyp 4 chars, 2 of them in the 3-char reference: precision 2/4; no brevity penalty (hyp longer)
    assert bleu(["你好天气"], ["你好呀"], 1) == pytest.approx(50.0)
    # hyp shorter than ref: BP = exp(1 - 4/2); unigram precision 1
    assert bleu(["你好"], ["你好你好"], 1) == pytest.approx(100 * math.exp(1 - 2))


def test_bleu2_by_hand():
    # unigrams 2/3, bigrams 1/2 ("你好" matches, "好吗" does not); no BP (equal length)
    assert bleu(["你好吗"], ["你好呀"], 2) == pytest.approx(100 * math.sqrt(2 / 3 * 1 / 2))


def test_distinct_by_hand():
    assert distinct(["哈哈哈", "你好"], 1) == pytest.approx(3 / 5)  # 哈 你 好 over 5 characters
    assert distinct(["哈哈哈", "你好"], 2) == pytest.approx(2 / 3)  # 哈哈 哈哈 你好
    assert distinct([""], 2) == 0


def test_char_f1_by_hand():
    # overlap {你,好} = 2; P = 2/2, R = 2/3
    assert char_f1("你好", "好你啊") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))


def test_repeats_and_tfidf():
    assert repeats_3gram("哈哈哈哈") and not repeats_3gram("哈哈哈") and not repeats_3gram("你好啊你好")
    assert repeats_3gram("你好啊你好啊")
    sims = tfidf_cosine(["你好", "天气"], ["你好", "你好"])
    assert sims[0] == pytest.approx(1.0) and sims[1] == pytest.approx(0.0)


def test_perplexity():
    assert perplexity(math.log(5) * 10, 10) == pytest.approx(5)
    assert perplexity(0.0, 0) == float("inf")
