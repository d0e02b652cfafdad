"""Teacher-forced scoring with the engine's models: the references' likelihood (perplexity) and the
numbers every ranking of a candidate set needs (`CandidateScores`), many sequences per model call.

Contexts are bounded as the chat bounds them (`Engine.fit_history`); a reply longer than half the
model's positions is cut to that, to leave room for context.
"""

from __future__ import annotations

import math
from typing import Callable

from chitchat.engine.engine import Engine
from chitchat.engine.fast import torch_threads
from chitchat.engine.replies import Candidate
from chitchat.eval.cases import Case
from chitchat.eval.ranking import CandidateScores

SEQUENCES_PER_CALL = 256  # sequences of similar length scored together (the model groups them further)


def reference_nll(engine: Engine, cases: list[Case], batch_size: int) -> tuple[list[tuple[float, int]], int]:
    """(total NLL, token count) of each reference (its closing [SEP] included) given its context,
    bounded like the chat's, teacher-forced, in right-padded batches; and how many references were
    cut to half the model's positions to leave room for context."""
    cap = engine.n_positions // 2
    seqs, starts, truncated = [], [], 0
    for c in cases:
        ref = engine.encode(c.reference)
        truncated += len(ref) > cap
        ref = ref[:cap]
        context = engine.context_ids(engine.fit_history([engine.encode(u) for u in c.context], len(ref) + 1))
        seqs.append(context + ref + [engine.sep_id])
        starts.append(len(context))
    out = []
    for i in range(0, len(seqs), batch_size):
        means = engine.fast.sequence_nll(seqs[i:i + batch_size], starts[i:i + batch_size], engine.pad_id).tolist()
        for mean, seq, start in zip(means, seqs[i:i + batch_size], starts[i:i + batch_size]):
            n = len(seq) - start
            out.append((mean * n, n))
    return out, truncated


def batched_nll(model, sequences: list[list[int]], starts: list[int], pad_id: int) -> list[float]:
    """`sequence_nll` of many sequences, in their order; similar lengths go together (less padding)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = [math.nan] * len(sequences)
    for i in range(0, len(order), SEQUENCES_PER_CALL):
        idx = order[i:i + SEQUENCES_PER_CALL]
        values = model.sequence_nll([sequences[j] for j in idx], [starts[j] for j in idx], pad_id).tolist()
        for j, v in zip(idx, values):
            out[j] = v
    return out


def score_sets(engine: Engine, sets: list[tuple[list[str], list[str]]], chunk: int = 32,
               advance: Callable[[int], None] | None = None) -> list[list[CandidateScores]]:
    """For each (context utterances, candidate replies): every candidate's `CandidateScores`, the
    context fitted once for the set's longest candidate. `chunk` sets are scored per round (the MMI
    model included, when the engine has one); `advance(n)` is told after each round."""
    cap = engine.n_positions // 2
    out: list[list[CandidateScores]] = []
    for i in range(0, len(sets), chunk):
        part = sets[i:i + chunk]
        seqs, starts, empty, mmi_groups = [], [], [], []
        for context, replies in part:
            ids = [engine.encode(r)[:cap] for r in replies]
            history = engine.fit_history([engine.encode(u) for u in context], max(map(len, ids), default=0))
            prefix = engine.context_ids(history)
            for r in ids:
                seqs.append(prefix + r + [engine.sep_id])
                starts.append(len(prefix))
                empty.append([engine.cls_id, *r, engine.sep_id])
            mmi_groups.append((history, [Candidate(text, r, math.nan) for text, r in zip(replies, ids)]))
        with torch_threads(engine.threads):
            nll = batched_nll(engine.fast, seqs, starts, engine.pad_id)
            nll_empty = batched_nll(engine.fast, empty, [1] * len(empty), engine.pad_id)
        has_mmi = engine.mmi is not None
        if has_mmi:
            engine.score_mmi_many(mmi_groups)
        k = 0
        for _, cands in mmi_groups:
            scores = []
            for cand in cands:
                mmi = (math.nan if cand.mmi is None else cand.mmi) if has_mmi else None
                scores.append(CandidateScores(nll[k], nll_empty[k], mmi))
                k += 1
            out.append(scores)
        if advance is not None:
            advance(len(part))
    return out
