"""The training loss: summed next-token cross-entropy of a GPT-2 LM, computed without full logits.

`GPT2LMHeadModel.forward` would materialise (tokens x vocabulary) logits, their log-softmax and
a zero-filled gradient of the same size; on a CPU that memory traffic costs about a quarter of a
training step. Here the hidden states of the positions that have a target (padding and each
row's last position have none) go through the LM head a chunk at a time; each chunk's softmax
gradient is formed in place and immediately multiplied back, so only the hidden-state and
LM-head gradients are kept. The result is the same sum of `F.cross_entropy` terms, with the
same gradients (up to float rounding).
"""

from __future__ import annotations

import torch
from torch import nn

from chitchat.training.batching import IGNORE

CHUNK_ELEMENTS = 1 << 23  # logits per chunk (32 MB in fp32)


def _target_nll(logits: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) per row, from the softmax; rows whose target probability underflows
    (a loss above ~69 nats) are recomputed exactly with logsumexp."""
    p = probs.gather(1, targets[:, None]).squeeze(1)
    nll = -torch.log(p)
    tiny = p < 1e-30
    if bool(tiny.any()):
        rows = tiny.nonzero().squeeze(1)
        sub = logits.index_select(0, rows)
        nll[rows] = torch.logsumexp(sub, -1) - sub.gather(1, targets[rows][:, None]).squeeze(1)
    return nll


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over `rows` of CE(h[row] @ W^T, targets); the gradients are computed in the forward
    pass (rows not listed get a zero gradient)."""

    @staticmethod
    def forward(ctx, h, weight, rows, targets, chunk):
        grad_h = torch.zeros_like(h)
        grad_w = torch.zeros_like(weight)
        total = h.new_zeros((), dtype=torch.float64)
        for s in range(0, rows.shape[0], chunk):
            idx, ys = rows[s:s + chunk], targets[s:s + chunk]
            hs = h.index_select(0, idx)
            logits = hs @ weight.t()
            probs = torch.softmax(logits, dim=-1)  # one fused pass per row, cache-resident
            total += _target_nll(logits, probs, ys).sum(dtype=torch.float64)
            del logits
            probs[torch.arange(len(ys), device=ys.device), ys] -= 1.0  # d loss / d logits
            grad_h.index_copy_(0, idx, probs @ weight)
            grad_w.addmm_(probs.t(), hs)
        ctx.save_for_backward(grad_h, grad_w)
        return total.to(h.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None


def _chunk_rows(vocab: int) -> int:
    return max(64, CHUNK_ELEMENTS // max(vocab, 1))


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         rows: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy of the logits `h[rows] @ weight.T` against `targets` (one per row;
    all rows of h when `rows` is None)."""
    if rows is None:
        rows = torch.arange(h.shape[0], device=h.device)
    if rows.shape[0] == 0:
        return (h.sum() + weight.sum()) * 0.0
    with torch.autocast(h.device.type, enabled=False):
        h32, w32 = h.float(), weight.float()
        chunk = _chunk_rows(weight.shape[0])
        if not torch.is_grad_enabled():
            total = torch.zeros((), dtype=torch.float64, device=h.device)
            for s in range(0, rows.shape[0], chunk):
                logits = h32.index_select(0, rows[s:s + chunk]) @ w32.t()
                total += _target_nll(logits, torch.softmax(logits, -1), targets[s:s + chunk]).sum(dtype=torch.float64)
            return total.float()
        return _LinearCrossEntropy.apply(h32, w32, rows, targets, chunk)


def _no_padding_warning(*args, **kwargs) -> None:
    return None


class CausalLMLoss(nn.Module):
    """Wraps a GPT2LMHeadModel so that DistributedDataParallel sees one forward returning the
    summed loss over all labelled positions (labels already shifted, IGNORE elsewhere)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # Right padding without an attention mask is exact here (see chitchat.training.batching); silence
        # the generic "you may be padding without a mask" warning of this instance only.
        model.transformer.warn_if_padding_and_no_attention_mask = _no_padding_warning

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.model.transformer(input_ids=input_ids, use_cache=False)
        h = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])
        y = labels.reshape(-1)
        keep = (y != IGNORE).nonzero().squeeze(1)
        head = self.model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise ValueError("LM heads with a bias are not supported")
        return linear_cross_entropy(h, head.weight, y.index_select(0, keep), keep)
