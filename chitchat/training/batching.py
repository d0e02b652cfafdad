"""Batches that waste little compute: length bucketing under a token budget, and their tensors.

Every epoch the windows are shuffled with a seeded generator, cut into large chunks (many batches'
worth), sorted by length inside each chunk and packed greedily into micro-batches whose padded size
(rows x longest row) stays within `batch_tokens`; the micro-batches are then shuffled. Windows of
similar length share a batch, so padding stays a few percent, while the chunking keeps batch
composition random from one epoch to the next.

Rows are right-padded. A GPT-2 row attends causally, so a real token never sees the padding after
it: no attention mask is needed (which lets scaled-dot-product attention take its fast causal
path), positions are 0..len-1 as for an unpadded row, and padding only needs its loss ignored
(label -100). Labels are stored already shifted: `labels[r, t]` is the target of position t.

A global optimiser step consumes `world_size * grad_accum` micro-batches of the epoch's list; rank
r takes its contiguous share. The plan depends only on (seed, epoch, lengths, budget), so every
rank computes the same plan and a resumed run finds the same batches again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100
CHUNK_BATCHES = 64  # batches' worth of windows sorted together


def plan_batches(lengths: np.ndarray, batch_tokens: int, batch_size: int | None = None,
                 rng: np.random.Generator | None = None, chunk_batches: int = CHUNK_BATCHES) -> list[np.ndarray]:
    """Micro-batches (arrays of positions into `lengths`) with rows x max length <= batch_tokens
    (a window longer than the budget gets a batch of its own) and at most `batch_size` rows.
    With `rng`: shuffled chunks and batch order; without: one sorted pass (for evaluation)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return []
    order = rng.permutation(n) if rng is not None else np.arange(n)
    mean = max(1.0, float(lengths.mean()))
    chunk = n if rng is None else max(1, int(chunk_batches * batch_tokens / mean))
    limit = batch_size or n
    batches: list[np.ndarray] = []
    for start in range(0, n, chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        sizes = lengths[part]
        i, m = 0, len(part)
        while i < m:  # greedy: the most rows r with r x (longest = last, sorted) <= budget
            lo, hi = 1, min(limit, m - i)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if mid * int(sizes[i + mid - 1]) <= batch_tokens:
                    lo = mid
                else:
                    hi = mid - 1
            batches.append(part[i:i + lo])
            i += lo
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def group_steps(n_batches: int, per_step: int) -> list[list[int | None]]:
    """Batch indices of each optimiser step, `per_step` slots each; the last step's missing
    slots are None (a rank with nothing to do runs a zero-weighted copy, to stay in sync)."""
    steps = []
    for s in range(0, n_batches, per_step):
        slots: list[int | None] = list(range(s, min(s + per_step, n_batches)))
        steps.append(slots + [None] * (per_step - len(slots)))
    return steps


def padding_stats(batches: list[np.ndarray], lengths: np.ndarray) -> tuple[int, int]:
    """(useful tokens, positions computed) over the batches."""
    useful = sum(int(lengths[b].sum()) for b in batches)
    computed = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
    return useful, computed


@dataclass
class Batch:
    input_ids: np.ndarray  # (rows, T) int64, right-padded
    labels: np.ndarray     # (rows, T) int64, shifted targets, IGNORE on padding and last positions
    tokens: int            # real (non-padding) positions
    targets: int           # positions with a loss
    sq_lengths: int        # sum of squared row lengths (attention FLOPs)


def collate(sequences: list[np.ndarray], pad_id: int, id_map: np.ndarray | None = None) -> Batch:
    lens = [len(s) for s in sequences]
    width = max(lens)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    labels = np.full((len(sequences), width), IGNORE, dtype=np.int64)
    for r, s in enumerate(sequences):
        s = np.asarray(s, dtype=np.int64)
        if id_map is not None:
            s = id_map[s]
        ids[r, :len(s)] = s
        labels[r, :len(s) - 1] = s[1:]
    return Batch(ids, labels, sum(lens), sum(max(n - 1, 0) for n in lens), sum(n * n for n in lens))
