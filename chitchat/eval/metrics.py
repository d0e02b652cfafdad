"""Reply-quality metrics for evaluation: pure functions over lists of strings.

BLEU comes from sacrebleu (corpus BLEU, geometric mean of 1..n-gram precisions with the brevity
penalty; character level on characters, word level on jieba words, no further tokenisation).
TF-IDF cosine uses scikit-learn. Distinct-n, character F1 and the 3-gram repetition rate are a few
lines each, defined in their docstrings and checked against hand-computed examples in the tests.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache


def chars(text: str) -> list[str]:
    """Characters of a reply, spaces left out."""
    return [c for c in text if not c.isspace()]


@lru_cache(maxsize=65536)
def _words(text: str) -> tuple[str, ...]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict ..." chatter on stderr
    return tuple(w for w in jieba.lcut(text) if w.strip())


def words(text: str) -> list[str]:
    """jieba words of a reply."""
    return list(_words(text))


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def bleu(hyps: list[str], refs: list[str], max_n: int, level: str = "char") -> float:
    """Corpus BLEU-`max_n` (0..100) by sacrebleu on characters (`level="char"`) or jieba words."""
    from sacrebleu.metrics import BLEU

    split = chars if level == "char" else words
    h = [" ".join(split(x)) for x in hyps]
    r = [" ".join(split(x)) for x in refs]
    if not any(h) or not any(r):
        return 0.0
    metric = BLEU(max_ngram_order=max_n, tokenize="none", effective_order=False)
    return float(metric.corpus_score(h, [r]).score)


def distinct(hyps: list[str], n: int, level: str = "char") -> float:
    """Distinct-n: distinct n-grams over all n-grams of all replies (0 when there are none)."""
    split = chars if level == "char" else words
    grams = [g for h in hyps for g in _ngrams(split(h), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def char_f1(hyp: str, ref: str) -> float:
    """F1 of the bags of characters: 2PR/(P+R) with P = overlap/|hyp|, R = overlap/|ref|."""
    h, r = Counter(chars(hyp)), Counter(chars(ref))
    overlap = sum((h & r).values())
    if overlap == 0:
        return 0.0
    p, rec = overlap / sum(h.values()), overlap / sum(r.values())
    return 2 * p * rec / (p + rec)


def tfidf_cosine(hyps: list[str], refs: list[str]) -> list[float]:
    """Cosine similarity of each reply to its reference, on TF-IDF vectors of character 1-2-grams
    fitted on all replies and references together."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not hyps:
        return []
    docs = [" ".join(chars(x)) for x in hyps + refs]
    if not any(docs):
        return [0.0] * len(hyps)
    vec = TfidfVectorizer(analyzer="word", token_pattern=r"\S", ngram_range=(1, 2), lowercase=False)
    m = vec.fit_transform(docs)
    h, r = m[: len(hyps)], m[len(hyps):]
    return [float(v) for v in h.multiply(r).sum(axis=1).A1]  # rows are L2-normalised


def repeats_3gram(text: str) -> bool:
    """True when some character 3-gram occurs twice in the reply."""
    grams = _ngrams(chars(text), 3)
    return len(set(grams)) < len(grams)


def reply_metrics(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """All generation metrics of one system's replies against the references."""
    n = len(hyps)
    if n == 0:
        return {}
    cos = tfidf_cosine(hyps, refs)
    return {
        "bleu1_char": bleu(hyps, refs, 1, "char"), "bleu2_char": bleu(hyps, refs, 2, "char"),
        "bleu4_char": bleu(hyps, refs, 4, "char"),
        "bleu1_word": bleu(hyps, refs, 1, "word"), "bleu2_word": bleu(hyps, refs, 2, "word"),
        "bleu4_word": bleu(hyps, refs, 4, "word"),
        "distinct1_char": distinct(hyps, 1, "char"), "distinct2_char": distinct(hyps, 2, "char"),
        "distinct1_word": distinct(hyps, 1, "word"), "distinct2_word": distinct(hyps, 2, "word"),
        "f1_char": sum(char_f1(h, r) for h, r in zip(hyps, refs)) / n,
        "tfidf_cosine": sum(cos) / n,
        "avg_len_chars": sum(len(chars(h)) for h in hyps) / n,
        "empty_rate": sum(1 for h in hyps if not chars(h)) / n,
        "repeat_3gram_rate": sum(1 for h in hyps if repeats_3gram(h)) / n,
    }


def perplexity(total_nll: float, count: int) -> float:
    """exp(total negative log-likelihood / count); inf when nothing was counted."""
    return math.exp(total_nll / count) if count else float("inf")
