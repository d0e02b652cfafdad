"""The built-in scorings (registered in chitchat.engine.scoring): mean negative log-likelihoods per
token, lower is better.

- `likelihood`: the dialogue model's NLL of the reply (its closing [SEP] included when it has one)
  given the context, teacher-forced; a sampled candidate comes with it from the sampling loop.
- `mmi`: the MMI model's NLL of the reversed history given the reply, `[CLS] reply [SEP] u_n [SEP]
  ... u_1 [SEP]`, counted on the history tokens only (their [SEP]s included). Only the positions that
  are scored go through the last layer and the output layer (FastGPT2.sequence_nll).
- `pmi`: `likelihood` minus the dialogue model's NLL of the reply given no context (`[CLS] reply
  [SEP]`): minus the pointwise mutual information per token, how much the context makes the reply
  likelier. A reply that fits any context ("我不知道") gains nothing from it.

Each scores all the candidates of a call in batches, identical sequences once.
"""

from __future__ import annotations

import math

import torch

from chitchat.engine.fast import torch_threads
from chitchat.engine.scoring import Group, Scoring, register

SEQUENCES_PER_CALL = 256  # sequences of similar length scored together (the model groups them further)


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


def nll_of(model, sequences: list[list[int]], starts: list[int], pad_id: int) -> list[float]:
    """`sequence_nll` of the sequences: a chat turn's or a server batch's (up to SEQUENCES_PER_CALL) in
    one call in their order, as they always were; more (eval, training the selector) sorted by length
    first, so that a batch is padded to its own longest sequence, not to the longest of all."""
    if len(sequences) <= SEQUENCES_PER_CALL:
        return model.sequence_nll(sequences, starts, pad_id).tolist()
    return batched_nll(model, sequences, starts, pad_id)


def _reply_ids(engine, cand) -> list[int]:
    return [*cand.ids, *([engine.sep_id] if cand.finished else [])]


@torch.inference_mode()
def score_likelihood(engine, groups: list[Group]) -> None:
    sequences, starts, owners = [], [], []
    for g in groups:
        context = engine.context_ids(g.history)
        for cand in g.candidates:
            if "likelihood" in cand.scores:
                continue
            reply = _reply_ids(engine, cand)[:max(engine.fast.n_positions - len(context), 1)]
            sequences.append(context + reply)
            starts.append(len(context))
            owners.append(cand)
    if not sequences:
        return
    with torch_threads(engine.threads):
        nll = batched_nll(engine.fast, sequences, starts, engine.pad_id)
    for cand, value in zip(owners, nll):
        cand.scores["likelihood"] = value


@torch.inference_mode()
def score_mmi(engine, groups: list[Group]) -> None:
    sequences, starts, owners = [], [], []
    for g in groups:
        reversed_history = []
        for u in reversed(g.history):
            reversed_history.extend(u)
            reversed_history.append(engine.sep_id)
        same: dict[tuple[int, ...], list] = {}  # identical candidates are scored once
        for cand in g.candidates:
            same.setdefault(tuple(cand.ids), []).append(cand)
        for ids, owner in same.items():
            head = [engine.cls_id, *ids, engine.sep_id][:engine.mmi.n_positions - 1]
            room = engine.mmi.n_positions - len(head)
            sequences.append(head + reversed_history[:max(room, 0)])
            starts.append(len(head))
            owners.append(owner)
    if not sequences:
        return
    with torch_threads(engine.threads):
        nll = nll_of(engine.mmi, sequences, starts, engine.pad_id)
    for owner, value in zip(owners, nll):
        for cand in owner:
            cand.scores["mmi"] = value


@torch.inference_mode()
def score_pmi(engine, groups: list[Group]) -> None:
    same: dict[tuple[tuple[int, ...], bool], list] = {}
    for g in groups:
        for cand in g.candidates:
            same.setdefault((tuple(cand.ids), cand.finished), []).append(cand)
    sequences = [[engine.cls_id, *ids, *([engine.sep_id] if finished else [])][:engine.fast.n_positions]
                 for ids, finished in same]
    if not sequences:
        return
    with torch_threads(engine.threads):
        nll = nll_of(engine.fast, sequences, [1] * len(sequences), engine.pad_id)
    for owner, empty in zip(same.values(), nll):
        for cand in owner:
            cand.scores["pmi"] = cand.scores["likelihood"] - empty


register(Scoring("likelihood", "dialogue model's NLL per token of the reply given the context", score_likelihood))
register(Scoring("mmi", "MMI model's NLL per token of the reversed history given the reply", score_mmi,
                 available=lambda engine: engine.mmi is not None))
register(Scoring("pmi", "NLL of the reply given the context minus given no context (-PMI per token)", score_pmi,
                 needs=("likelihood",)))
