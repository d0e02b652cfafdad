"""GPT-2 inference without a framework: `FastGPT2` runs a `transformers` GPT-2's weights directly.

The weights are taken once from the model: fused QKV, each weight contiguous in the layout its
matrix product wants, no autograd and no framework bookkeeping (`transformers`' own `generate` with
its cache does the same work with more overhead; bench/chat.py measures both; torch.compile is not
used: it did not make a step faster and takes long to compile). tests/engine/test_generate.py
checks the logits against `transformers`.

A decode step (`FastGPT2.step`, one token per row) reads every weight once, which at the small
preset in fp32 is more than a CPU's cache keeps, so fp32 steps stream their weights from memory
(int8 ones are a quarter the size). The design follows from that:
- the weights sit in one block of 2 MB pages (`page_backed`: fewer TLB misses while streaming);
- products of a few rows use an (out, in) copy in two blocks, which streams faster than a few-row
  sgemm and lets 2 threads each stream half; those of 9 to 128 rows (a server's batches) a copy
  packed for oneDNN, with the GELU and the residual sums fused (see `Fp32Linear`);
- the key/value cache buffer is kept between calls (`borrow_cache`), so a reply does not pay page
  faults for a fresh one.
Large products (prefill, MMI scoring) are compute-bound and use the plain (in, out) layout.
"""

from __future__ import annotations

import math
import mmap
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chitchat.engine.quantize import Fp32Linear, Int8Linear, check_int8
from chitchat.errors import ChitchatError


@contextmanager
def torch_threads(n: int | None):
    """Run with `n` intra-op threads (None: leave torch's setting), restoring the setting after."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_GELU_C = 2 * math.sqrt(2 / math.pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh-approximated GELU. On large inputs in its identical form x * sigmoid(2z), computed
    in place (fewer passes over memory than F.gelu(approximate="tanh")); on small ones F.gelu (fewer ops)."""
    if x.numel() < 16384:
        return F.gelu(x, approximate="tanh")
    y = x * x
    return y.mul_(_GELU_C * 0.044715).add_(_GELU_C).mul_(x).sigmoid_().mul_(x)


_HUGE_PAGE = 2 << 20
_SPARE_CACHE_BYTES = 64 << 20  # a larger key/value cache (a big batch) is not kept between calls
_SPARE_BUFFERS = 2  # buffers of each kind kept: one per call running at once (a server's lanes)
_NLL_ROWS = 320  # rows of logits at a time in sequence_nll (see FastGPT2._nll)
_NLL_ROWS_INT8 = 32
_NLL_GROUP_TOKENS = 2048  # sequence_nll's sequences at a time, in tokens


def page_backed(numel: int) -> torch.Tensor:
    """An uninitialised fp32 CPU tensor of `numel` elements in memory the kernel is asked to back with
    2 MB pages (transparent huge pages, Linux; elsewhere an ordinary tensor). A decode step streams
    every weight once, about 20 MB at the small preset in fp32: with 4 KB pages that is some 5,000
    TLB misses a step, with 2 MB pages a handful."""
    madvise = getattr(mmap, "MADV_HUGEPAGE", None)
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if madvise is None or not flags or numel * 4 < _HUGE_PAGE:
        return torch.empty(numel)
    try:
        region = mmap.mmap(-1, numel * 4 + _HUGE_PAGE, flags=flags)
        region.madvise(madvise)
    except (OSError, ValueError):
        return torch.empty(numel)
    raw = torch.frombuffer(region, dtype=torch.uint8)  # keeps `region` alive as long as any view of it
    start = -raw.data_ptr() % _HUGE_PAGE
    return raw[start:start + numel * 4].view(torch.float32)


def pack_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of fp32 CPU `tensors`, contiguous, side by side (64-byte aligned) in one page-backed block."""
    sizes = [(t.numel() + 15) // 16 * 16 for t in tensors]
    block = page_backed(sum(sizes))
    out, at = [], 0
    for t, size in zip(tensors, sizes):
        out.append(block[at:at + t.numel()].view(t.shape).copy_(t))
        at += size
    return out


@dataclass(slots=True)
class Block:
    """One transformer layer's weights, in the order the layer uses them."""

    ln1: tuple[torch.Tensor, torch.Tensor]  # layer norm before attention: (weight, bias)
    qkv: Fp32Linear | Int8Linear  # fused query/key/value projection, D -> 3D
    out: Fp32Linear | Int8Linear  # attention output projection, D -> D
    ln2: tuple[torch.Tensor, torch.Tensor]  # layer norm before the MLP: (weight, bias)
    fc: Fp32Linear | Int8Linear  # MLP up-projection, D -> 4D (GELU after it)
    fc_out: Fp32Linear | Int8Linear  # MLP down-projection, 4D -> D

    def linears(self) -> tuple:
        return self.qkv, self.out, self.fc, self.fc_out


class FastGPT2:
    """GPT-2 inference (fp32 or int8 weights) over the weights of a `transformers` GPT2LMHeadModel.
    The weights are detached copies: no call records an autograd graph."""

    def __init__(self, model, int8: bool = False, device: str | torch.device = "cpu"):
        cfg = model.config
        if getattr(cfg, "model_type", None) != "gpt2":
            raise ChitchatError(f"unsupported model type {getattr(cfg, 'model_type', None)!r} (expected gpt2)")
        unsupported = [name for name, bad in (
            ("activation_function", cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh")),
            ("scale_attn_weights", not cfg.scale_attn_weights),
            ("scale_attn_by_inverse_layer_idx", cfg.scale_attn_by_inverse_layer_idx),
            ("reorder_and_upcast_attn", cfg.reorder_and_upcast_attn),
            ("add_cross_attention", cfg.add_cross_attention),
        ) if bad]
        if unsupported:
            raise ChitchatError(f"unsupported GPT-2 configuration: {', '.join(unsupported)}")
        if int8:
            check_int8(device)
        self.device = torch.device(device)
        self.int8 = int8
        self.n_layer, self.n_head, self.d = cfg.n_layer, cfg.n_head, cfg.n_embd
        self.head_dim = self.d // self.n_head
        self.n_positions = cfg.n_positions
        self.eps = cfg.layer_norm_epsilon
        sd = {k: v.detach().to(self.device, torch.float32) for k, v in model.state_dict().items()}
        linear = Int8Linear if int8 else Fp32Linear
        self.wte = sd["transformer.wte.weight"].contiguous()  # (V, D): embedding lookup
        self.wpe = sd["transformer.wpe.weight"].contiguous()
        head = sd.get("lm_head.weight", self.wte)
        self.vocab_size = head.shape[0]
        self.head = linear(head, None, out_in=True)  # logits = h @ head.T, weight stored for that product
        self.ln_f = (sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
        self.layers: list[Block] = []
        for i in range(self.n_layer):
            p = f"transformer.h.{i}."
            self.layers.append(Block(
                ln1=(sd[p + "ln_1.weight"], sd[p + "ln_1.bias"]),
                qkv=linear(sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]),
                out=linear(sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"]),
                ln2=(sd[p + "ln_2.weight"], sd[p + "ln_2.bias"]),
                fc=linear(sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]),
                fc_out=linear(sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"]),
            ))
        if self.device.type == "cpu":
            self._pack_weights()
        # Calls may run at once on several threads (a server's lanes): each borrows its own buffers.
        self._spare: list[torch.Tensor] = []  # key/value cache buffers kept for the next calls
        self._scratch: list[torch.Tensor] = []  # sequence_nll's logits and log-softmax (CPU, fp32)
        self._layout_lock = threading.Lock()

    def _pack_weights(self) -> None:
        """Move every fp32 tensor a decode step reads (all but the embedding table, of which it reads
        a row per token) into one page-backed block."""
        holders = [lin for block in self.layers for lin in block.linears() if isinstance(lin, Fp32Linear)]
        if isinstance(self.head, Fp32Linear):
            holders.append(self.head)
        tensors = [self.wpe, *[t for block in self.layers for pair in (block.ln1, block.ln2) for t in pair],
                   *self.ln_f]
        for lin in holders:
            tensors += [t for t in (lin.weight, lin.bias) if t is not None]
        packed = iter(pack_tensors(tensors))
        self.wpe = next(packed)
        for block in self.layers:
            block.ln1 = (next(packed), next(packed))
            block.ln2 = (next(packed), next(packed))
        self.ln_f = (next(packed), next(packed))
        for lin in holders:
            lin.weight = next(packed)
            if lin.bias is not None:
                lin.bias = next(packed)

    def prepare_decode(self, one_row: bool) -> None:
        """Ready the (out, in) layouts that decode steps use (see Fp32Linear), made on first use in a
        page-backed block of their own (a model that never decodes, the MMI model, does not hold
        them); `one_row`: one-row products use them too (right with 2 threads or more)."""
        linears = [lin for block in self.layers for lin in block.linears() if isinstance(lin, Fp32Linear)]
        if isinstance(self.head, Fp32Linear):
            linears.append(self.head)
        with self._layout_lock:  # two threads' first calls make them once
            if any(lin.blocks is None for lin in linears):
                parts = [lin.transposed() for lin in linears]
                flat = [t for p in parts for t in p]
                packed = iter(pack_tensors(flat) if self.device.type == "cpu" else flat)
                for lin, p in zip(linears, parts):
                    lin.set_transposed([next(packed) for _ in p])
        for lin in linears:
            lin.one_row = one_row

    def new_cache(self, batch: int, length: int) -> list[torch.Tensor]:
        """Per layer, keys and values: (2, batch, heads, length, head_dim)."""
        return [torch.empty(2, batch, self.n_head, length, self.head_dim, device=self.device) for _ in range(self.n_layer)]

    def borrow_cache(self, batch: int, length: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`new_cache` in a buffer kept from an earlier call when it is large enough (a fresh buffer
        costs a page fault per 4 KB; a page-backed one is reused). Hand it back with `return_cache`."""
        per_layer = 2 * batch * self.n_head * length * self.head_dim
        try:
            buffer = self._spare.pop()
        except IndexError:
            buffer = None
        if buffer is None or buffer.numel() < per_layer * self.n_layer:
            size = per_layer * self.n_layer
            buffer = page_backed(size) if self.device.type == "cpu" else torch.empty(size, device=self.device)
        shape = (2, batch, self.n_head, length, self.head_dim)
        return buffer, [buffer[i * per_layer:(i + 1) * per_layer].view(shape) for i in range(self.n_layer)]

    def return_cache(self, buffer: torch.Tensor) -> None:
        if len(self._spare) < _SPARE_BUFFERS and buffer.numel() * buffer.element_size() <= _SPARE_CACHE_BYTES:
            self._spare.append(buffer)

    def hidden(self, ids: torch.Tensor, positions: torch.Tensor, *, cache: list[torch.Tensor] | None = None,
               start: int = 0, mask: torch.Tensor | None = None, keys: list | None = None,
               skip: int = 0) -> torch.Tensor:
        """Final hidden states (B, S, D) of tokens `ids` (B, S) at `positions` (B, S).

        With `cache`, this chunk's keys/values are written at [start, start+S) and attention reads
        [0, start+S); otherwise the chunk attends to itself, causally. `mask` (bool, broadcastable to
        (B, 1, S, keys)) says which keys each query may see; None means all earlier ones. With `keys`
        (a list), each layer's (2, B, H, S, Dh) keys/values are appended to it. With `skip` (no
        `cache`), the first `skip` positions' final states are not wanted: the last layer computes
        only their keys and values, and the result is (B, S - skip, D).
        """
        B, S = ids.shape
        D, H, Dh = self.d, self.n_head, self.head_dim
        x = (F.embedding(ids, self.wte) + F.embedding(positions, self.wpe)).view(B * S, D)
        causal = mask is None and S > 1
        last = self.n_layer - 1
        caches = cache if cache is not None else [None] * self.n_layer
        for i, (block, layer_cache) in enumerate(zip(self.layers, caches)):
            h = F.layer_norm(x, (D,), block.ln1[0], block.ln1[1], self.eps)
            qkv = block.qkv(h).view(B, S, 3, H, Dh).permute(2, 0, 3, 1, 4)  # (3, B, H, S, Dh)
            if keys is not None:
                keys.append(qkv[1:])
            if layer_cache is not None:
                layer_cache[:, :, :, start:start + S] = qkv[1:]
                k, v = layer_cache[0, :, :, :start + S], layer_cache[1, :, :, :start + S]
            else:
                k, v = qkv[1], qkv[2]
            if i == last and skip and cache is None:
                # queries from `skip` on; causal from the bottom right (SDPA's is_causal aligns top left)
                m = (torch.ones(S - skip, S, dtype=torch.bool, device=x.device).tril(skip) if mask is None
                     else mask[..., skip:, :])
                a = F.scaled_dot_product_attention(qkv[0, :, :, skip:], k, v, attn_mask=m)
                S = S - skip
                x = x.view(B, S + skip, D)[:, skip:].reshape(B * S, D)
            else:
                a = F.scaled_dot_product_attention(qkv[0], k, v, attn_mask=mask, is_causal=causal)
            x = block.out.residual(a.transpose(1, 2).reshape(B * S, D), x)
            h = F.layer_norm(x, (D,), block.ln2[0], block.ln2[1], self.eps)
            x = block.fc_out.residual(block.fc.gelu(h, gelu_tanh), x)
        return F.layer_norm(x, (D,), self.ln_f[0], self.ln_f[1], self.eps).view(B, S, D)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, cache: list[torch.Tensor], start: int,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """`hidden` for one new token per row, as a decode step needs it, with fewer and smaller ops:
        `tokens` and `positions` (B,), keys/values written at `start`, attention over [0, start];
        `mask` (bool, (B, 1, 1, start + 1)) as in `hidden`. Returns (B, D)."""
        B = tokens.shape[0]
        D, H, Dh, eps = self.d, self.n_head, self.head_dim, self.eps
        x = self.wte.index_select(0, tokens).add_(self.wpe.index_select(0, positions))
        end = start + 1
        for block, layer_cache in zip(self.layers, cache):
            ln1, ln2 = block.ln1, block.ln2
            qkv = block.qkv(F.layer_norm(x, (D,), ln1[0], ln1[1], eps)).view(B, 3, H, Dh)
            layer_cache[:, :, :, start] = qkv[:, 1:].transpose(0, 1)
            a = F.scaled_dot_product_attention(qkv[:, 0, :, None], layer_cache[0, :, :, :end],
                                               layer_cache[1, :, :, :end], attn_mask=mask)
            x = block.out.residual(a.view(B, D), x)
            x = block.fc_out.residual(block.fc.gelu(F.layer_norm(x, (D,), ln2[0], ln2[1], eps), gelu_tanh), x)
        return F.layer_norm(x, (D,), self.ln_f[0], self.ln_f[1], eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, D) hidden states -> (N, V) logits."""
        return self.head(hidden)

    @torch.inference_mode()
    def sequence_nll(self, sequences: list[list[int]], starts: list[int], pad_id: int = 0) -> torch.Tensor:
        """Mean negative log-likelihood of `seq[start:]` given `seq[:start]`, for each sequence, in one
        right-padded batch (causal attention never looks right, so padding needs no mask). NaN where a
        sequence has nothing to score. Many sequences (a server batch's candidates) go in groups of
        about 2,048 tokens, so that the activations of a group stay in the CPU's cache."""
        n = len(sequences)
        if n == 0:
            return torch.zeros(0)
        width = max(len(s) for s in sequences)
        if width > self.n_positions:
            raise ChitchatError(f"sequence of {width} tokens exceeds the model's {self.n_positions} positions")
        group = max(1, _NLL_GROUP_TOKENS // width)
        if n > group:
            return torch.cat([self.sequence_nll(sequences[i:i + group], starts[i:i + group], pad_id)
                              for i in range(0, n, group)])
        width -= 1  # the last token predicts nothing: the model reads one position less
        rows, cols, targets = [], [], []
        for i, (seq, start) in enumerate(zip(sequences, starts)):
            first = max(start, 1)
            rows.extend([i] * max(len(seq) - first, 0))
            cols.extend(range(first - 1, len(seq) - 1))
            targets.extend(seq[first:])
        if not rows:
            return torch.full((n,), float("nan"))
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, :len(seq) - 1] = torch.tensor(seq[:-1], dtype=torch.long)
        ids = ids.to(self.device)
        positions = torch.arange(width, device=self.device).expand(n, width)
        rows_t = torch.tensor(rows, dtype=torch.long, device=self.device)
        targets_t = torch.tensor(targets, dtype=torch.long, device=self.device)
        skip = min(cols)  # no sequence scores a position before this one
        cols_t = torch.tensor(cols, dtype=torch.long, device=self.device) - skip
        h = self.hidden(ids, positions, skip=skip)[rows_t, cols_t]
        nll = self._nll(h, targets_t)
        total = torch.zeros(n, device=self.device).index_add_(0, rows_t, nll)
        count = torch.zeros(n, device=self.device).index_add_(0, rows_t, torch.ones_like(nll))
        return (total / count).cpu()  # 0/0 -> NaN for a sequence with nothing to score

    def _nll(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-log p(target) for each row of final hidden states `h` (R, D).

        fp32 on the CPU: the logits and their log-softmax go to two buffers kept between calls, up to
        320 rows at a time. A chat turn's MMI scoring makes some 300 rows, 9 MB of logits and as much
        log-softmax: as fresh tensors that is thousands of page faults a call (the allocator hands
        blocks that large back to the system), and much smaller slices make MKL's product slower.
        int8: 32 rows at a time (fbgemm does worse with many rows at once)."""
        R = h.shape[0]
        if not (isinstance(self.head, Fp32Linear) and self.head.bias is None and self.device.type == "cpu"):
            step = _NLL_ROWS_INT8 if self.int8 else _NLL_ROWS
            return torch.cat([F.cross_entropy(self.logits(h[i:i + step]), targets[i:i + step], reduction="none")
                              for i in range(0, R, step)])
        rows = min(R, _NLL_ROWS)
        size = rows * self.vocab_size
        try:
            scratch = self._scratch.pop()
        except IndexError:
            scratch = None
        if scratch is None or scratch.numel() < 2 * size:
            scratch = page_backed(2 * size)
        logits = scratch[:size].view(rows, self.vocab_size)
        logp = scratch[size:2 * size].view(rows, self.vocab_size)
        out = torch.empty(R)
        for i in range(0, R, rows):
            r = min(rows, R - i)
            torch.mm(h[i:i + r], self.head.weight, out=logits[:r])
            torch.log_softmax(logits[:r], 1, out=logp[:r])
            torch.gather(logp[:r], 1, targets[i:i + r, None], out=out[i:i + r, None])
        if len(self._scratch) < _SPARE_BUFFERS:
            self._scratch.append(scratch)
        return out.neg_()
