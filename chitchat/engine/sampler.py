"""Choosing the next token of each row of a batch from the model's logits.

The controls apply in this order: banned tokens, repetition penalty, no-repeat n-grams, temperature,
top-k, top-p; then a draw from what is left.
- [PAD], [UNK] and [CLS] are never produced, nor a space as the first token (normalised text never
  starts with one), nor [SEP] before `min_len` tokens, nor an id beyond the tokenizer's vocabulary.
- The repetition penalty divides the probability weight of every token already in the reply by
  `repetition_penalty` (the caller keeps `seen`, -log(penalty) at each such token, added to its
  logit): the probability of a seen token goes down whatever the sign of its logit. (GPT2-chitchat
  divides the logit, which raises the probability of a seen token whose logit is negative;
  `transformers`' sign-aware variant can still raise a seen token's probability when other seen
  tokens are lowered more.)
- A temperature below `GREEDY_BELOW` (1e-4) means greedy: the most likely token (see engine/settings.py).
- With top-k, top-p applies within the top k (as `transformers` does).
- The draw is the exponential race (argmax of p / Exp(1) noise), with noise drawn on the CPU from a
  CPU generator, so that a seed gives the same replies on every device. With one generator per
  history (`Generators`), each history's rows draw their noise from their own: a history gets the
  replies its seed gives whatever else shares the batch, as long as the noise's width does not
  depend on the batch (`shared_width`).
"""

from __future__ import annotations

import os

import torch

from chitchat.engine.settings import GREEDY_BELOW, ReplySettings


class Generators(list):
    """One CPU generator per history of a batch, in order (a plain Generator serves every row)."""


def shared_width(cfg: ReplySettings) -> bool:
    """Whether the noise each row draws has a width fixed by `cfg` alone (top-k, greedy, or the whole
    vocabulary), not by the other rows of the batch (nucleus sampling without top-k keeps as many
    tokens as the batch's widest row needs): then histories with their own seeds may share a batch."""
    return cfg.top_k > 0 or cfg.temperature < GREEDY_BELOW or not 0 < cfg.top_p < 1


def seed_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with `seed` (None: a random seed)."""
    g = torch.Generator()
    g.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else seed)
    return g


def nucleus_candidates(logits: torch.Tensor, top_p: float, first: int = 256):
    """(probabilities, token ids) sorted largest first, enough of them to hold probability `top_p`:
    the top `first` when they do (topk of a few hundred costs far less than sorting the whole
    vocabulary). The probabilities are those of the whole distribution."""
    log_norm = torch.logsumexp(logits, dim=1, keepdim=True)
    if first < logits.shape[1]:
        values, index = logits.topk(first, dim=1)
        probs = (values - log_norm).exp()
        if bool((probs.sum(dim=1) >= top_p).all()):
            return probs, index
    values, index = logits.sort(dim=1, descending=True)
    return (values - log_norm).exp(), index


class Sampler:
    """Next tokens from raw logits, with the ban masks of one vocabulary made once.

    `vocab_size`: the model's outputs; `known`: the tokenizer's tokens (ids from `known` on are
    embedding rows no token maps to); `never`: ids never produced; `space_id`: never first (None:
    no such token); `sep_id`: not before `min_len` tokens."""

    def __init__(self, vocab_size: int, known: int, *, never: list[int], space_id: int | None, sep_id: int,
                 device: torch.device):
        self.bans: dict[tuple[bool, bool], torch.Tensor] = {}  # additive logit masks by (first step, before min_len)
        for first in (False, True):
            for early in (False, True):
                m = torch.zeros(vocab_size, device=device)
                banned = never + ([space_id] if first and space_id is not None else []) + ([sep_id] if early else [])
                m[banned] = float("-inf")
                m[known:] = float("-inf")
                self.bans[first, early] = m

    def next_tokens(self, logits: torch.Tensor, step: int, out: list[list[int]], seen: torch.Tensor | None,
                    cfg: ReplySettings, gen: "torch.Generator | Generators",
                    owners: list[int] | None = None) -> torch.Tensor:
        """Next token per row (B,) from raw logits (B, V), which are modified in place; `step`: the
        reply tokens so far; `out`: each row's tokens so far; `seen`: (B, V) repetition penalties
        to add (None: no penalty); with `Generators`, `owners` is each row's history index."""
        logits += self.bans[step == 0, step < cfg.min_len]
        if seen is not None:
            logits += seen
        n = cfg.no_repeat_ngram_size
        if n and step >= n - 1:
            for row, toks in enumerate(out):
                prefix = tuple(toks[step - n + 1:]) if n > 1 else ()
                banned = [toks[i + n - 1] for i in range(step - n + 1) if tuple(toks[i:i + n - 1]) == prefix]
                if banned:
                    logits[row, banned] = float("-inf")
        top_k = cfg.top_k
        if cfg.temperature < GREEDY_BELOW:  # greedy: dividing by it would overflow float32 into NaN
            top_k = 1
        elif cfg.temperature != 1.0:
            logits /= cfg.temperature
        top_p = cfg.top_p if 0 < cfg.top_p < 1 else 0.0
        if top_k and top_k < logits.shape[1]:
            values, index = logits.topk(top_k, dim=1)  # sorted, largest first
            probs = values.softmax(dim=1)
        elif top_p:
            probs, index = nucleus_candidates(logits, top_p)
        else:
            probs, index = logits.softmax(dim=1), None
        if top_p:
            before = probs.cumsum(dim=1) - probs  # probability mass of the better tokens
            probs = probs.masked_fill(before >= top_p, 0.0)
        # argmax of p / Exp(1) noise draws index i with probability p_i (the exponential race, as
        # Gumbel-max); drawn on the CPU with the CPU generator, so that a seed means the same everywhere
        noise = _noise(probs.shape, gen, owners).to(probs.device)
        choice = (probs / noise).argmax(dim=1, keepdim=True)
        return (choice if index is None else index.gather(1, choice)).squeeze(1)


def _noise(shape, gen, owners: list[int] | None) -> torch.Tensor:
    """Exp(1) noise of `shape`: from one generator, or each run of rows from its history's generator."""
    if not isinstance(gen, Generators):
        return torch.empty(shape).exponential_(generator=gen)
    parts, start = [], 0
    while start < len(owners):
        end = start
        while end < len(owners) and owners[end] == owners[start]:
            end += 1
        parts.append(torch.empty((end - start, *shape[1:])).exponential_(generator=gen[owners[start]]))
        start = end
    return torch.cat(parts)
