"""Text -> features -> TF-IDF rows. A feature is a jieba word (without its HMM guesses for unknown
words: the character n-grams cover those) or a character n-gram inside one run of letters, digits or
CJK characters; punctuation and spaces only separate. Weights are sublinear term frequency times
inverse document frequency, each row scaled to unit length (so a dot product is a cosine)."""

from __future__ import annotations

import logging
import re
from array import array
from typing import Iterable, Sequence

import jieba
import numpy as np
import scipy.sparse as sp

jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict ..." chatter on stderr
_RUN = re.compile(r"\w+")


def features(text: str, words: bool, char_ngrams: Sequence[int]) -> list[str]:
    """The features of one normalised utterance, repeats included (they are the term frequency)."""
    text = text.lower()
    out = [w for w in jieba.lcut(text, HMM=False) if _RUN.search(w)] if words else []
    for run in _RUN.findall(text):
        for n in char_ngrams:
            out.extend(run[i:i + n] for i in range(len(run) - n + 1))
    return out


def count_matrix(feature_lists: Iterable[Iterable[str]], vocab: dict[str, int], grow: bool) -> sp.csr_matrix:
    """Feature counts, one row per list. `grow`: unseen features get the next id in `vocab`; else
    they are dropped."""
    indptr, indices = array("q", [0]), array("i")
    for feats in feature_lists:
        if grow:
            indices.extend(vocab.setdefault(f, len(vocab)) for f in feats)
        else:
            indices.extend(i for i in map(vocab.get, feats) if i is not None)
        indptr.append(len(indices))
    ids = np.frombuffer(indices, np.int32) if len(indices) else np.zeros(0, np.int32)
    m = sp.csr_matrix((np.ones(len(ids), np.float32), ids, np.frombuffer(indptr, np.int64)),
                      shape=(len(indptr) - 1, len(vocab)))
    m.sum_duplicates()  # repeats of a feature in a row become one count
    return m


def idf_of(df: np.ndarray, n: int) -> np.ndarray:
    """Smoothed inverse document frequency, as scikit-learn's TfidfVectorizer has it."""
    return (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)


def tfidf_rows(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """(1 + log count) * idf, each row scaled to unit length (empty rows stay empty)."""
    m = counts.astype(np.float32)
    m.data = (1 + np.log(m.data)) * idf[m.indices]
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    norms = np.sqrt(np.bincount(rows, weights=m.data.astype(np.float64) ** 2, minlength=m.shape[0]))
    m.data /= norms[rows].astype(np.float32)
    return m
