"""int8 inference keeps the perplexity of a (briefly) trained tiny model within 2% of fp32, on LCCC toy valid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from chitchat.engine.fast import FastGPT2, torch_threads
from chitchat.model.gpt2 import build_model
from chitchat.tokens.normalize import normalize
from chitchat.tokens.tokenizer import CLS, DEFAULT_VOCAB, SEP, load_tokenizer

LCCC = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "lccc_toy"
MAX_LEN = 48
STEPS = 80
BATCH = 8


def sequences(path: Path, tokenizer, limit: int | None = None) -> list[list[int]]:
    cls_id, sep_id = tokenizer.convert_tokens_to_ids(CLS), tokenizer.convert_tokens_to_ids(SEP)
    out = []
    for dialogue in json.loads(path.read_text(encoding="utf-8"))[:limit]:
        ids = [cls_id]
        for u in dialogue:
            ids += tokenizer.encode(normalize(u), add_special_tokens=False) + [sep_id]
        out.append(ids[:MAX_LEN])
    return out


def perplexity(fast: FastGPT2, seqs: list[list[int]]) -> float:
    total, count = 0.0, 0
    for i in range(0, len(seqs), 50):
        batch = seqs[i:i + 50]
        nll = fast.sequence_nll(batch, [1] * len(batch))
        for mean, seq in zip(nll.tolist(), batch):
            total += mean * (len(seq) - 1)
            count += len(seq) - 1
    return math.exp(total / count)


@pytest.mark.skipif(not (LCCC / "train.json").is_file(), reason=f"{LCCC} is absent")
def test_int8_perplexity_within_2_percent_of_fp32():
    tokenizer = load_tokenizer(DEFAULT_VOCAB)
    train, valid = sequences(LCCC / "train.json", tokenizer, 600), sequences(LCCC / "valid.json", tokenizer)
    model = build_model(tokenizer, "tiny", seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    pad = tokenizer.pad_token_id
    model.train()
    with torch_threads(1):
        for _ in range(STEPS):  # enough to move the weights far from their initialisation
            idx = torch.randint(len(train), (BATCH,), generator=gen).tolist()
            width = max(len(train[i]) for i in idx)
            ids = torch.full((BATCH, width), pad)
            for row, i in enumerate(idx):
                ids[row, :len(train[i])] = torch.tensor(train[i])
            labels = ids.masked_fill(ids == pad, -100)
            loss = model(input_ids=ids, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        fp32 = perplexity(FastGPT2(model), valid)
        int8 = perplexity(FastGPT2(model, int8=True), valid)
    assert fp32 < 1000, f"the model did not train (perplexity {fp32:.0f})"  # the untrained one is ~8000
    print(f"perplexity fp32 {fp32:.2f} int8 {int8:.2f}")
    assert abs(int8 / fp32 - 1) < 0.02, f"fp32 {fp32:.2f}, int8 {int8:.2f}"
