"""Windows over long dialogues: checked against brute force on many random dialogues."""

import random

import numpy as np
import pytest

from chitchat.tokens.sequences import build_windows, window_tokens

CLS, SEP = 2, 3


def cost(lengths, start, end):
    """[CLS] + each utterance and its [SEP], written independently of the module."""
    return 1 + sum(lengths[i] + 1 for i in range(start, end + 1))


def longest_history_start(lengths, i, max_len):
    """Brute force: the earliest start s for which utterances s..i fit in one window."""
    fitting = [s for s in range(i + 1) if cost(lengths, s, i) <= max_len]
    return min(fitting)


def random_cases(n_cases, seed):
    rng = random.Random(seed)
    for _ in range(n_cases):
        max_len = rng.choice([6, 8, 12, 16, 32, 64, 256])
        n = rng.randint(1, 40)
        kind = rng.random()
        if kind < 0.2:  # utterances that barely fit alone
            lengths = [rng.randint(max(1, max_len - 4), max_len - 2) for _ in range(n)]
        elif kind < 0.4:  # short chitchat
            lengths = [rng.randint(1, 4) for _ in range(n)]
        else:
            lengths = [rng.randint(1, max_len - 2) for _ in range(n)]
        yield lengths, max_len


@pytest.mark.parametrize("seed", range(5))
def test_windows_properties_against_brute_force(seed):
    for lengths, max_len in random_cases(600, seed):
        n = len(lengths)
        windows = build_windows(lengths, max_len)
        assert windows, (lengths, max_len)
        covered = set()
        best_history = {}  # reply index -> longest history it gets in some window
        for start, end in windows:
            assert 0 <= start <= end < n
            assert cost(lengths, start, end) <= max_len, (lengths, max_len, (start, end))
            covered.update(range(start, end + 1))
            for i in range(start + 1, end + 1):
                best_history[i] = max(best_history.get(i, 0), i - start)
        # no utterance is lost
        assert covered == set(range(n)), (lengths, max_len, windows)
        for i in range(1, n):
            can_share = cost(lengths, i - 1, i) <= max_len
            if can_share:
                # i is a reply (not first) in some window, with the longest history that fits
                assert i in best_history, (lengths, max_len, windows, i)
                assert best_history[i] == i - longest_history_start(lengths, i, max_len), (lengths, max_len, windows, i)
            else:
                assert i not in best_history
                assert any(s == i for s, _ in windows)
        # windows advance: each one covers some reply the earlier ones did not
        ends = [e for _, e in windows]
        assert ends == sorted(set(ends))
        assert len(windows) <= n


def test_a_dialogue_that_fits_is_one_window():
    assert build_windows([3, 4, 5], 16) == [(0, 2)]  # 1 + 3+1 + 4+1 + 5+1 = 16
    assert build_windows([3, 4, 5], 15) == [(0, 1), (1, 2)]


def test_long_dialogue_worked_example():
    lengths = [10] * 10  # each utterance costs 11; a window of 3 costs 34
    windows = build_windows(lengths, 34)
    assert windows == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7), (6, 8), (7, 9)]


def test_utterance_that_cannot_share_starts_its_own_window():
    windows = build_windows([2, 8, 2], 12)  # 2 and 8 together cost 13 > 12; 8 and 2 cost 13 too
    assert windows == [(0, 0), (1, 1), (2, 2)]


def test_sequence_layout_and_mmi_reversal():
    utts = [np.array(u, dtype=np.uint16) for u in ([10, 11], [20], [30, 31, 32])]
    fwd = window_tokens(utts, 0, 2, CLS, SEP)
    assert fwd.tolist() == [CLS, 10, 11, SEP, 20, SEP, 30, 31, 32, SEP]
    assert fwd.dtype == np.uint16
    mmi = window_tokens(utts, 0, 2, CLS, SEP, reverse=True)
    assert mmi.tolist() == [CLS, 30, 31, 32, SEP, 20, SEP, 10, 11, SEP]
    assert window_tokens(utts, 1, 2, CLS, SEP).tolist() == [CLS, 20, SEP, 30, 31, 32, SEP]
    assert window_tokens(utts, 1, 2, CLS, SEP, reverse=True).tolist() == [CLS, 30, 31, 32, SEP, 20, SEP]
    assert len(fwd) == cost([2, 1, 3], 0, 2)
