"""Teacher-forced scoring with the engine's models: the references' likelihood (perplexity) and every
scoring of a candidate set (the engine's registry, chitchat.engine.scoring), many sequences per call.

Contexts are bounded as the chat bounds them (`Engine.fit_history`); a reply longer than half the
model's positions is cut to that, to leave room for context.
"""

from __future__ import annotations

from typing import Callable

from chitchat.engine.engine import Engine
from chitchat.engine.replies import Candidate
from chitchat.engine.scoring import Group
from chitchat.eval.cases import Case

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


def score_sets(engine: Engine, sets: list[tuple[list[str], list[str]]], names: list[str], chunk: int = 32,
               advance: Callable[[int], None] | None = None) -> list[list[Candidate]]:
    """For each (context utterances, candidate replies): the candidates (source "given") with scorings
    `names` computed, the context fitted once for the set's longest candidate. `chunk` sets are
    scored per round; `advance(n)` is told after each round."""
    cap = engine.n_positions // 2
    out: list[list[Candidate]] = []
    for i in range(0, len(sets), chunk):
        part = sets[i:i + chunk]
        groups = []
        for context, replies in part:
            ids = [engine.encode(r)[:cap] for r in replies]
            history = engine.fit_history([engine.encode(u) for u in context], max(map(len, ids), default=0))
            groups.append(Group(history, [Candidate(text, r, "given") for text, r in zip(replies, ids)]))
        engine.score(groups, names)
        out.extend(g.candidates for g in groups)
        if advance is not None:
            advance(len(part))
    return out
