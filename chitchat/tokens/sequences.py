"""Dialogues to training sequences: `[CLS] u1 [SEP] u2 [SEP] ... un [SEP]`, cut into windows.

A dialogue longer than `max_len` tokens becomes overlapping windows that start at an utterance
boundary, chosen so that every utterance appears as a reply (not first in its window) with as
much preceding history as fits. The MMI model sees the same windows with the utterances reversed.
"""

from __future__ import annotations

import numpy as np


def window_cost(lengths: list[int], start: int, end: int) -> int:
    """Tokens of `[CLS] u_start [SEP] ... u_end [SEP]`."""
    return 1 + sum(lengths[start:end + 1]) + (end - start + 1)


def build_windows(lengths: list[int], max_len: int) -> list[tuple[int, int]]:
    """Inclusive (start, end) utterance ranges. Every utterance i >= 1 is a reply in some window,
    with its longest fitting history; each utterance must already fit alone (len + 2 <= max_len)."""
    n = len(lengths)
    windows: list[tuple[int, int]] = []
    start, nxt = 0, 0  # nxt: first utterance not yet covered as a reply (0: the opener)
    while nxt < n:
        if windows:  # earliest start that lets utterance `nxt` fit with its history
            start = nxt
            while start > 0 and window_cost(lengths, start - 1, nxt) <= max_len:
                start -= 1
        end = max(start, nxt)
        while end + 1 < n and window_cost(lengths, start, end + 1) <= max_len:
            end += 1
        windows.append((start, end))
        nxt = end + 1
    return windows


def window_tokens(utterances: list[np.ndarray], start: int, end: int, cls_id: int, sep_id: int,
                  reverse: bool = False) -> np.ndarray:
    """Token ids of one window; `reverse` gives the MMI order (last utterance first)."""
    order = range(end, start - 1, -1) if reverse else range(start, end + 1)
    sep = np.array([sep_id], dtype=utterances[start].dtype)
    parts = [np.array([cls_id], dtype=sep.dtype)]
    for i in order:
        parts.append(utterances[i])
        parts.append(sep)
    return np.concatenate(parts)
