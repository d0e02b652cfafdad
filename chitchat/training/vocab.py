"""Training a model on a dataset written with another vocabulary (retraining on new corpora).

Dataset ids are translated to the model's ids through the token strings. Characters that occur
in the dataset but are missing from the model's vocabulary either become [UNK] (reported), or,
with `extend`, are appended to the vocabulary (most frequent first); the embedding matrix grows
and the new rows start at the mean of the existing embeddings (GPT-2 ties the LM head to it, so a
new character starts with the average logit instead of a random one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from chitchat.tokens.tokenizer import UNK, build_tokenizer, tokenizer_tokens, vocab_hash


@dataclass
class VocabAlignment:
    tokenizer: object                 # the model's tokenizer (extended when new tokens were added)
    id_map: np.ndarray | None         # dataset id -> model id; None when identical
    added: list[str] = field(default_factory=list)
    unk_types: int = 0                # distinct dataset characters that became [UNK]
    unk_tokens: int = 0               # their occurrences
    total_tokens: int = 0

    def message(self, model_name: str) -> str | None:
        if self.added:
            return f"added {len(self.added)} characters to the vocabulary of {model_name} (now {len(self.tokenizer)} tokens)"
        if self.unk_types:
            share = 100 * self.unk_tokens / max(self.total_tokens, 1)
            return (f"{self.unk_types} characters of the dataset ({self.unk_tokens} occurrences, {share:.3f}% of "
                    f"its tokens) are not in the vocabulary of {model_name} and become [UNK]; --extend-vocab adds them")
        return None


def token_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Occurrences of each dataset id (all windows), read from the memory map in slices."""
    counts = np.zeros(vocab_size, np.int64)
    step = 1 << 24
    for s in range(0, len(tokens), step):
        counts += np.bincount(np.asarray(tokens[s:s + step], dtype=np.int64), minlength=vocab_size)[:vocab_size]
    return counts


def align_vocab(model_tokenizer, dataset_tokenizer, counts: np.ndarray, extend: bool) -> VocabAlignment:
    model_tokens = tokenizer_tokens(model_tokenizer)
    data_tokens = tokenizer_tokens(dataset_tokenizer)
    if vocab_hash(model_tokens) == vocab_hash(data_tokens):
        return VocabAlignment(model_tokenizer, None, total_tokens=int(counts.sum()))
    index = {t: i for i, t in enumerate(model_tokens)}
    missing = [(int(counts[i]) if i < len(counts) else 0, i, t) for i, t in enumerate(data_tokens) if t not in index]
    missing = [m for m in missing if m[0] > 0]
    added: list[str] = []
    tokenizer = model_tokenizer
    if extend and missing:
        added = [t for _, _, t in sorted(missing, key=lambda m: (-m[0], m[1]))]
        tokenizer = build_tokenizer(model_tokens + added)
        index = {t: i for i, t in enumerate(model_tokens + added)}
    unk = index[UNK]
    id_map = np.array([index.get(t, unk) for t in data_tokens], dtype=np.int64)
    unk_types = 0 if added else len(missing)
    unk_tokens = 0 if added else sum(m[0] for m in missing)
    return VocabAlignment(tokenizer, id_map, added, unk_types, unk_tokens, int(counts.sum()))


def extend_embeddings(model, new_size: int) -> None:
    """Grow the (tied) embeddings to `new_size` rows; new rows = mean of the old ones."""
    old = model.get_input_embeddings().weight.shape[0]
    if new_size <= old:
        return
    with torch.no_grad():
        means = [m.weight.mean(dim=0).clone() if m is not None else None
                 for m in (model.get_input_embeddings(), model.get_output_embeddings())]
        model.resize_token_embeddings(new_size, mean_resizing=False)
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        inp.weight[old:] = means[0]
        if out is not None and out.weight.data_ptr() != inp.weight.data_ptr():
            out.weight[old:] = means[1]
    model.config.vocab_size = new_size
