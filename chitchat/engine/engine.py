"""The generation engine: sample candidate replies in one batch with a key/value cache, rank them by MMI.

No terminal code here: the chat REPL, the evaluator and the server all drive `Engine`.

- `FastGPT2` runs GPT-2 inference over weights taken once from a `transformers` model: fused QKV,
  weights contiguous in the layout the matmul wants, no autograd and no framework bookkeeping.
  `transformers`' own `generate` with its cache takes 2 to 3 times as long for one reply
  (bench/chat.py prints both; torch.compile made a step slower and took 40 s to compile, so it is
  not used). `tests/test_generate.py` checks the logits against `transformers`.
- A decode step (`FastGPT2.step`, one token per row) reads every weight once: about 20 MB at the
  small preset in fp32, more than this machine's cache keeps (a cyclic read slows down past about
  16 MB here), so fp32 steps stream from memory and int8 ones (5 MB) stay in the cache. Hence: the
  weights sit in one block of 2 MB pages (`_page_backed`: fewer TLB misses, 15-25% faster streaming
  here); products of 1 to 8 rows use an (out, in) copy in two blocks, which streams 1.4 to 1.9
  times faster than MKL's few-row sgemm and lets 2 threads each stream half, and those of 9 to 128
  rows (a server's batches) a copy packed for oneDNN, GELU and residual sums fused (`Fp32Linear`); the
  key/value cache buffer is kept between calls; and per-row bookkeeping stays in Python lists
  instead of a dozen tiny tensor ops a step. Large products (prefill, MMI scoring) are
  compute-bound and use the plain (in, out) layout.
- `Engine.generate` samples `candidates` replies for each of several histories: histories are
  left-padded into one batch, each is read once (prefill), its cache rows are shared by its
  candidates, and every step feeds one new token per row. A candidate ends at [SEP] or at `max_len`.
- Streaming: `generate_stream` and `replies_stream` are the same loops as generators, yielding each
  decoding step's new tokens; `generate` and `replies` drive them to the end, so both forms give
  the same candidates for the same seed. A history given up (`send`) leaves the batch: its rows
  are cut out of the key/value cache and the decoding goes on with the others.
- Sampling: repetition penalty, no-repeat n-grams, temperature, top-k, top-p, in that order.
  [PAD], [UNK] and [CLS] are never produced, nor a space as the first token (normalised text never
  starts with one), nor [SEP] before `min_len` tokens.
- The repetition penalty divides the probability weight of every token already in the reply by
  `repetition_penalty` (subtracts log(penalty) from its logit): the probability of a seen token goes
  down whatever the sign of its logit. (GPT2-chitchat divides the logit, which raises the probability
  of a seen token whose logit is negative; `transformers`' sign-aware variant can still raise a seen
  token's probability when other seen tokens are lowered more.)
- MMI: each candidate is scored by the MMI model's mean negative log-likelihood of the reversed
  history given the candidate, `[CLS] candidate [SEP] u_n [SEP] ... u_1 [SEP]`, counted on the
  history tokens only (their [SEP]s included), all candidates in one right-padded batch. Only the
  positions that are scored go through the last layer's attention output and MLP, and the output
  layer (about a third of the work) only at them.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from chitchat.errors import ChitchatError
from chitchat.model.sampling import SamplingConfig
from chitchat.corpus.normalize import normalize
from chitchat.engine.quantize import Fp32Linear, Int8Linear, check_int8
from chitchat.tokens.tokenizer import CLS, PAD, SEP, SPACE, UNK

MAX_RESAMPLE = 3  # rounds of sampling when every candidate came out empty


@dataclass
class Candidate:
    """One sampled reply. `nll`: the dialogue model's mean negative log-likelihood per token of the
    reply (its closing [SEP] included); `mmi`: the MMI model's mean NLL of the reversed history given
    the reply (None when not scored, NaN/inf when the MMI model failed on it). Lower is better."""

    text: str
    ids: list[int]
    nll: float
    mmi: float | None = None
    finished: bool = True  # ended with [SEP] (False: cut at max_len)

    @property
    def empty(self) -> bool:
        return not self.text.strip()

    def to_dict(self) -> dict:
        return {"text": self.text, "nll": _json_float(self.nll), "mmi": _json_float(self.mmi), "finished": self.finished}


@dataclass
class Reply:
    text: str
    candidates: list[Candidate]
    chosen: int
    ranking: str  # "mmi", or "likelihood" when there is no MMI model, it is off, or it failed on all candidates
    attempts: int = 1  # sampling rounds (more than 1 when every candidate came out empty)


@dataclass
class ReplyStep:
    """One decoding step of `Engine.replies_stream`: for each history still sampled, the new token of
    each of its candidates (None: that candidate had ended; [SEP] ends it). `attempt` counts the
    sampling rounds: a new round (every candidate came out empty) starts its replies afresh."""

    attempt: int
    tokens: dict[int, list[int | None]]


Steps = Generator  # a generator of steps whose return value is the final result (see run_to_end)


@dataclass
class WrittenText:
    """One reply's text as `Engine.replies_stream` writes it (one candidate: the reply is known as
    it is written). `add` each step's token; it returns the new text."""

    engine: "Engine"
    attempt: int = 0  # the sampling round whose tokens `ids` holds
    ids: list[int] = field(default_factory=list)
    text: str = ""  # what `add` has returned so far, joined

    def add(self, step: ReplyStep, row: int) -> str:
        """The new text once history `row`'s token of `step` (its only candidate's) is added."""
        if step.attempt != self.attempt:  # a new round: the last one's reply was empty, nothing was shown
            self.attempt, self.ids = step.attempt, []
        tokens = step.tokens.get(row)
        token = tokens[0] if tokens else None
        if token is None or token == self.engine.sep_id:
            return ""
        self.ids.append(token)
        text = self.engine.decode(self.ids)  # a prefix of the next one's: decode strips spaces at the ends only
        new, self.text = text[len(self.text):], text
        return new


def run_to_end(steps: Generator):
    """Drive a streaming generation to its end; its result."""
    try:
        while True:
            next(steps)
    except StopIteration as end:
        return end.value


def _json_float(x: float | None):
    if x is None:
        return None
    return x if math.isfinite(x) else str(x)


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


def _seed_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else seed)
    return g


def _nucleus_candidates(logits: torch.Tensor, top_p: float, first: int = 256):
    """(probabilities, token ids) sorted largest first, enough of them to hold probability `top_p`:
    the top `first` when they do (a full sort of 8,000 costs 0.5 ms a row here, topk(256) a tenth
    of it). The probabilities are those of the whole distribution."""
    log_norm = torch.logsumexp(logits, dim=1, keepdim=True)
    if first < logits.shape[1]:
        values, index = logits.topk(first, dim=1)
        probs = (values - log_norm).exp()
        if bool((probs.sum(dim=1) >= top_p).all()):
            return probs, index
    values, index = logits.sort(dim=1, descending=True)
    return (values - log_norm).exp(), index


_GELU_C = 2 * math.sqrt(2 / math.pi)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh-approximated GELU. On large inputs in its identical form x * sigmoid(2z), computed
    in place (2.5x faster than F.gelu(approximate="tanh") here); on small ones F.gelu (fewer ops)."""
    if x.numel() < 16384:
        return F.gelu(x, approximate="tanh")
    y = x * x
    return y.mul_(_GELU_C * 0.044715).add_(_GELU_C).mul_(x).sigmoid_().mul_(x)


_HUGE_PAGE = 2 << 20
_SPARE_CACHE_BYTES = 64 << 20  # a larger key/value cache (a big batch) is not kept between calls
_NLL_ROWS = 320  # rows of logits at a time in sequence_nll (see FastGPT2._nll)
_NLL_ROWS_INT8 = 32
_NLL_GROUP_TOKENS = 2048  # sequence_nll's sequences at a time, in tokens


def _page_backed(numel: int) -> torch.Tensor:
    """An uninitialised fp32 CPU tensor of `numel` elements in memory the kernel is asked to back with
    2 MB pages (transparent huge pages, Linux; elsewhere an ordinary tensor). A decode step streams
    every weight once, about 20 MB at the small preset in fp32, more than this CPU's cache keeps:
    with 4 KB pages that is 5,000 TLB misses a step, and a cyclic read of 20-30 MB ran 15-25%
    faster here from 2 MB pages."""
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


def _pack(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of fp32 CPU `tensors`, contiguous, side by side (64-byte aligned) in one page-backed block."""
    sizes = [(t.numel() + 15) // 16 * 16 for t in tensors]
    block = _page_backed(sum(sizes))
    out, at = [], 0
    for t, size in zip(tensors, sizes):
        out.append(block[at:at + t.numel()].view(t.shape).copy_(t))
        at += size
    return out


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
        self.layers = []
        for i in range(self.n_layer):
            p = f"transformer.h.{i}."
            self.layers.append((
                (sd[p + "ln_1.weight"], sd[p + "ln_1.bias"]),
                linear(sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]),
                linear(sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"]),
                (sd[p + "ln_2.weight"], sd[p + "ln_2.bias"]),
                linear(sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]),
                linear(sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"]),
            ))
        if self.device.type == "cpu":
            self._pack_weights()
        self._spare: list[torch.Tensor] = []  # a key/value cache buffer kept for the next call
        self._scratch: torch.Tensor | None = None  # sequence_nll's logits and log-softmax (CPU, fp32)

    def _pack_weights(self) -> None:
        """Move every fp32 tensor a decode step reads (all but the embedding table, of which it reads
        a row per token) into one page-backed block."""
        holders = [lin for layer in self.layers for lin in layer if isinstance(lin, Fp32Linear)]
        if isinstance(self.head, Fp32Linear):
            holders.append(self.head)
        tensors = [self.wpe, *[t for layer in self.layers for pair in (layer[0], layer[3]) for t in pair],
                   *self.ln_f]
        for lin in holders:
            tensors += [t for t in (lin.weight, lin.bias) if t is not None]
        packed = iter(_pack(tensors))
        self.wpe = next(packed)
        self.layers = [((next(packed), next(packed)), qkv, out, (next(packed), next(packed)), fc, fc_out)
                       for _, qkv, out, _, fc, fc_out in self.layers]
        self.ln_f = (next(packed), next(packed))
        for lin in holders:
            lin.weight = next(packed)
            if lin.bias is not None:
                lin.bias = next(packed)

    def prepare_decode(self, one_row: bool) -> None:
        """Ready the (out, in) layouts that decode steps use (see Fp32Linear), made on first use in a
        page-backed block of their own (a model that never decodes, the MMI model, does not hold
        them); `one_row`: one-row products use them too (right with 2 threads or more)."""
        linears = [lin for layer in self.layers for lin in layer if isinstance(lin, Fp32Linear)]
        if isinstance(self.head, Fp32Linear):
            linears.append(self.head)
        if any(lin.blocks is None for lin in linears):
            parts = [lin.transposed() for lin in linears]
            flat = [t for p in parts for t in p]
            packed = iter(_pack(flat) if self.device.type == "cpu" else flat)
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
            buffer = _page_backed(size) if self.device.type == "cpu" else torch.empty(size, device=self.device)
        shape = (2, batch, self.n_head, length, self.head_dim)
        return buffer, [buffer[i * per_layer:(i + 1) * per_layer].view(shape) for i in range(self.n_layer)]

    def return_cache(self, buffer: torch.Tensor) -> None:
        if not self._spare and buffer.numel() * buffer.element_size() <= _SPARE_CACHE_BYTES:
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
        for i, ((ln1, qkv_proj, out_proj, ln2, fc, fc_out), layer_cache) in enumerate(zip(
                self.layers, cache if cache is not None else [None] * self.n_layer)):
            h = F.layer_norm(x, (D,), ln1[0], ln1[1], self.eps)
            qkv = qkv_proj(h).view(B, S, 3, H, Dh).permute(2, 0, 3, 1, 4)  # (3, B, H, S, Dh)
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
            x = out_proj.residual(a.transpose(1, 2).reshape(B * S, D), x)
            h = F.layer_norm(x, (D,), ln2[0], ln2[1], self.eps)
            x = fc_out.residual(fc.gelu(h, _gelu_tanh), x)
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
        for (ln1, qkv_proj, out_proj, ln2, fc, fc_out), layer_cache in zip(self.layers, cache):
            qkv = qkv_proj(F.layer_norm(x, (D,), ln1[0], ln1[1], eps)).view(B, 3, H, Dh)
            layer_cache[:, :, :, start] = qkv[:, 1:].transpose(0, 1)
            a = F.scaled_dot_product_attention(qkv[:, 0, :, None], layer_cache[0, :, :, :end],
                                               layer_cache[1, :, :, :end], attn_mask=mask)
            x = out_proj.residual(a.view(B, D), x)
            x = fc_out.residual(fc.gelu(F.layer_norm(x, (D,), ln2[0], ln2[1], eps), _gelu_tanh), x)
        return F.layer_norm(x, (D,), self.ln_f[0], self.ln_f[1], eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, D) hidden states -> (N, V) logits."""
        return self.head(hidden)

    @torch.inference_mode()
    def sequence_nll(self, sequences: list[list[int]], starts: list[int], pad_id: int = 0) -> torch.Tensor:
        """Mean negative log-likelihood of `seq[start:]` given `seq[:start]`, for each sequence, in one
        right-padded batch (causal attention never looks right, so padding needs no mask). NaN where a
        sequence has nothing to score. Many sequences go in groups of about 2,048 tokens: the
        activations of a group stay in the cache (80 sequences of 85 tokens, a server batch of 16
        replies with 5 candidates, took 14% less time so on one thread here)."""
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
        320 rows at a time. The 290 rows of a chat turn's MMI scoring make 9 MB of logits and as much
        log-softmax: as fresh tensors that was 4,500 page faults a call (the allocator hands blocks
        that large back to the system), 4 to 6 ms here, and smaller slices make MKL's product slower
        (5.3 ms for 128 rows, 8.5 for 290). int8: 32 rows at a time (fbgemm does worse with many
        rows: 11 ms against 25 for all 290 at once on 1 thread)."""
        R = h.shape[0]
        if not (isinstance(self.head, Fp32Linear) and self.head.bias is None and self.device.type == "cpu"):
            step = _NLL_ROWS_INT8 if self.int8 else _NLL_ROWS
            return torch.cat([F.cross_entropy(self.logits(h[i:i + step]), targets[i:i + step], reduction="none")
                              for i in range(0, R, step)])
        rows = min(R, _NLL_ROWS)
        size = rows * self.vocab_size
        if self._scratch is None or self._scratch.numel() < 2 * size:
            self._scratch = _page_backed(2 * size)
        logits = self._scratch[:size].view(rows, self.vocab_size)
        logp = self._scratch[size:2 * size].view(rows, self.vocab_size)
        out = torch.empty(R)
        for i in range(0, R, rows):
            r = min(rows, R - i)
            torch.mm(h[i:i + r], self.head.weight, out=logits[:r])
            torch.log_softmax(logits[:r], 1, out=logp[:r])
            torch.gather(logp[:r], 1, targets[i:i + r, None], out=out[i:i + r, None])
        return out.neg_()


class Engine:
    """Candidate generation and ranking over a dialogue model and an optional MMI model."""

    def __init__(self, model, tokenizer, mmi_model=None, *, int8: bool = False, device: str = "cpu",
                 threads: int | None = 1, model_path: str | None = None, mmi_path: str | None = None):
        """`threads`: torch intra-op threads while the engine runs (None: torch's setting). The
        default is 1: a decoding step is a few dozen small ops, and on a CPU shared with other
        work a second OpenMP thread that gets descheduled stalls every op (measured here: 2 threads
        made replies up to 10x slower while another process kept one of the 2 cores busy). With the
        CPU to itself, 2 threads (this machine's 2 cores) take about 30% off a reply with 5
        candidates and MMI, 10 to 20% off one without (bench/chat.py runs one thread per core)."""
        self.tokenizer = tokenizer
        self.threads = threads
        self.model_path, self.mmi_path = model_path, mmi_path
        self.int8 = int8
        self.device = torch.device(device)
        self.fast = FastGPT2(model, int8=int8, device=self.device)
        self.mmi = FastGPT2(mmi_model, int8=int8, device=self.device) if mmi_model is not None else None
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD, UNK, CLS, SEP, SPACE)}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = ids[PAD], ids[UNK], ids[CLS], ids[SEP]
        self.space_id = ids[SPACE] if ids[SPACE] is not None and ids[SPACE] != ids[UNK] else None
        self.vocab = self._decode_table()
        V = self.fast.vocab_size
        if len(self.vocab) > V:
            raise ChitchatError(f"tokenizer has {len(self.vocab)} tokens but the model only {V} outputs")
        if self.mmi is not None and self.mmi.vocab_size != V:
            raise ChitchatError(f"MMI model has {self.mmi.vocab_size} outputs, the dialogue model {V}: not the same vocabulary")
        self._bans = self._ban_masks(V)

    @classmethod
    def load(cls, model_dir, mmi_dir=None, *, int8: bool = False, device: str = "cpu",
             threads: int | None = 1) -> "Engine":
        from chitchat.model.gpt2 import load_model, resolve_model_dir
        from chitchat.tokens.tokenizer import tokenizer_tokens

        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ChitchatError(f"device {device}: CUDA is not available")
        model, tokenizer = load_model(model_dir, device="cpu")
        mmi_model = None
        if mmi_dir is not None:
            mmi_model, mmi_tokenizer = load_model(mmi_dir, device="cpu")
            if tokenizer_tokens(mmi_tokenizer) != tokenizer_tokens(tokenizer):
                raise ChitchatError(f"{mmi_dir}: the MMI model's vocabulary differs from the dialogue model's ({model_dir})")
        return cls(model, tokenizer, mmi_model, int8=int8, device=device, threads=threads,
                   model_path=str(resolve_model_dir(model_dir)),
                   mmi_path=str(resolve_model_dir(mmi_dir)) if mmi_dir is not None else None)

    # -- text <-> ids ---------------------------------------------------------------------------

    def _decode_table(self) -> list[str]:
        table = [""] * len(self.tokenizer)
        for tok, i in self.tokenizer.get_vocab().items():
            table[i] = "" if tok in (PAD, UNK, CLS, SEP) else (" " if tok == SPACE else tok)
        return table

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i < len(self.vocab)).strip()

    def encode(self, text: str) -> list[int]:
        """Normalised text -> token ids (characters missing from the vocabulary become [UNK])."""
        text = normalize(text)
        if not text:
            return []
        return self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids

    @property
    def n_positions(self) -> int:
        return min(self.fast.n_positions, self.mmi.n_positions) if self.mmi is not None else self.fast.n_positions

    def context_budget(self, max_len: int) -> int:
        """Tokens a history may take (`[CLS] u1 [SEP] ... un [SEP]`) so that a reply of `max_len`
        tokens and its [SEP] still fit the model's positions."""
        budget = self.n_positions - max_len - 1
        if budget < 3:
            raise ChitchatError(f"max_len {max_len} leaves no room for a history in {self.n_positions} positions")
        return budget

    def fit_history(self, utterances: list[list[int]], max_len: int) -> list[list[int]]:
        """The most recent utterances that fit the context budget; an utterance that does not fit
        alone is cut to its beginning (as preprocessing cuts long utterances)."""
        budget = self.context_budget(max_len) - 1  # [CLS]
        kept: list[list[int]] = []
        for u in reversed(utterances):
            cost = len(u) + 1
            if cost > budget:
                if not kept:
                    kept.append(u[:budget - 1])
                break
            kept.append(u)
            budget -= cost
        return kept[::-1]

    def context_ids(self, utterances: list[list[int]]) -> list[int]:
        ids = [self.cls_id]
        for u in utterances:
            ids.extend(u)
            ids.append(self.sep_id)
        return ids

    # -- sampling -------------------------------------------------------------------------------

    def _ban_masks(self, V: int) -> dict[tuple[bool, bool], torch.Tensor]:
        """Additive logit masks keyed by (first step, before min_len)."""
        base = [i for i in (self.pad_id, self.unk_id, self.cls_id) if i is not None]
        masks = {}
        for first in (False, True):
            for early in (False, True):
                m = torch.zeros(V, device=self.device)
                banned = base + ([self.space_id] if first and self.space_id is not None else []) + ([self.sep_id] if early else [])
                m[banned] = float("-inf")
                m[len(self.vocab):] = float("-inf")  # embedding rows beyond the tokenizer
                masks[first, early] = m
        return masks

    def _choose(self, logits: torch.Tensor, step: int, out: list[list[int]], seen: torch.Tensor | None,
                cfg: SamplingConfig, gen: torch.Generator) -> torch.Tensor:
        """Next token per row from raw logits (B, V), modified in place; `out`: each row's tokens so far."""
        logits += self._bans[step == 0, step < cfg.min_len]
        if seen is not None:
            logits += seen
        n = cfg.no_repeat_ngram_size
        if n and step >= n - 1:
            for row, toks in enumerate(out):
                prefix = tuple(toks[step - n + 1:]) if n > 1 else ()
                banned = [toks[i + n - 1] for i in range(step - n + 1) if tuple(toks[i:i + n - 1]) == prefix]
                if banned:
                    logits[row, banned] = float("-inf")
        if cfg.temperature != 1.0:
            logits /= cfg.temperature
        top_p = cfg.top_p if 0 < cfg.top_p < 1 else 0.0
        if cfg.top_k and cfg.top_k < logits.shape[1]:
            values, index = logits.topk(cfg.top_k, dim=1)  # sorted, largest first
            probs = values.softmax(dim=1)  # with top_k, top_p applies within the top k (as transformers does)
        elif top_p:
            probs, index = _nucleus_candidates(logits, top_p)
        else:
            probs, index = logits.softmax(dim=1), None
        if top_p:
            before = probs.cumsum(dim=1) - probs  # probability mass of the better tokens
            probs = probs.masked_fill(before >= top_p, 0.0)
        # argmax of p / Exp(1) noise draws index i with probability p_i (the exponential race, as
        # Gumbel-max); drawn on the CPU with the CPU generator, so that a seed means the same everywhere
        noise = torch.empty(probs.shape).exponential_(generator=gen).to(probs.device)
        choice = (probs / noise).argmax(dim=1, keepdim=True)
        return (choice if index is None else index.gather(1, choice)).squeeze(1)

    def generate(self, histories: list[list[str]] | list[list[list[int]]], sampling: SamplingConfig | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None) -> list[list[Candidate]]:
        """`sampling.candidates` sampled replies for each history (a list of utterances, oldest first;
        text, or token ids from `encode`), all in one batch. No MMI scoring here."""
        return run_to_end(self.generate_stream(histories, sampling, seed, generator))

    def generate_stream(self, histories: list[list[str]] | list[list[list[int]]],
                        sampling: SamplingConfig | None = None, seed: int | None = None,
                        generator: torch.Generator | None = None) -> Steps:
        """`generate` as a generator: after each decoding step it yields the new token of every row
        of the batch (row `i * candidates + j` is history i's candidate j; None for a row that had
        already ended; [SEP] ends a row), and it returns what `generate` returns: the same sampling,
        the same random draws, the same candidates. `send` it a set of rows to stop decoding
        (`replies_stream` does so for a client that went away): they leave the batch."""
        cfg = (sampling or SamplingConfig()).validate()
        gen = generator if generator is not None else _seed_generator(seed)
        contexts = [self.context_ids(self.fit_history(self._as_ids(h), cfg.max_len)) for h in histories]
        return self._sample_steps(contexts, cfg, gen)

    def _as_ids(self, history) -> list[list[int]]:
        return [u if isinstance(u, list) else self.encode(u) for u in history]

    def _sample(self, contexts: list[list[int]], cfg: SamplingConfig, gen: torch.Generator) -> list[list[Candidate]]:
        return run_to_end(self._sample_steps(contexts, cfg, gen))

    @torch.inference_mode()
    def _sample_steps(self, contexts: list[list[int]], cfg: SamplingConfig, gen: torch.Generator) -> Steps:
        model, dev = self.fast, self.device
        n, C = cfg.candidates, len(contexts)
        B = C * n
        lens = [len(c) for c in contexts]
        T0 = max(lens)
        total = T0 + cfg.max_len
        ids = torch.full((C, T0), self.pad_id, dtype=torch.long)
        for i, c in enumerate(contexts):
            ids[i, T0 - len(c):] = torch.tensor(c, dtype=torch.long)
        pads = torch.tensor([T0 - l for l in lens])
        ids, pads = ids.to(dev), pads.to(dev)
        positions = (torch.arange(T0, device=dev) - pads[:, None]).clamp_min(0)
        key_ok = None  # (B, total) keys a row may attend to; None when no row is padded
        prefill_mask = None
        if int(pads.max()) > 0:
            ctx_ok = torch.arange(T0, device=dev)[None, :] >= pads[:, None]  # (C, T0)
            causal = torch.ones(T0, T0, dtype=torch.bool, device=dev).tril()
            # a padded query sees itself, so that no attention row is empty (no NaN)
            prefill_mask = (causal & ctx_ok[:, None, :]) | torch.eye(T0, dtype=torch.bool, device=dev)
            prefill_mask = prefill_mask[:, None]
            key_ok = torch.ones(B, total, dtype=torch.bool, device=dev)
            key_ok[:, :T0] = ctx_ok.repeat_interleave(n, 0)
        buffer, cache = model.borrow_cache(B, total)
        try:
            with torch_threads(self.threads):
                model.prepare_decode(one_row=torch.get_num_threads() > 1)
                kv: list[torch.Tensor] = []
                h = model.hidden(ids, positions, mask=prefill_mask, keys=kv, skip=T0 - 1)  # the last position's state
                for layer_cache, layer_kv in zip(cache, kv):  # each context's keys, shared by its candidates
                    layer_cache.view(2, C, n, *layer_cache.shape[2:])[:, :, :, :, :T0] = layer_kv.unsqueeze(2)
                logits = model.logits(h[:, -1]).repeat_interleave(n, 0)
                out, length, done, logp = yield from self._decode_steps(logits, cache, T0, lens, key_ok, cfg, gen)
        finally:
            model.return_cache(buffer)
        if not all(math.isfinite(x) for x in logp):
            raise ChitchatError("the dialogue model produced invalid (NaN or infinite) probabilities")
        result: list[list[Candidate]] = []
        for c in range(C):
            row_candidates = []
            for j in range(n):
                b = c * n + j
                reply_ids = out[b][:length[b]]
                scored = length[b] + (1 if done[b] else 0)  # the closing [SEP] counts
                row_candidates.append(Candidate(self.decode(reply_ids), reply_ids, -logp[b] / max(scored, 1),
                                                finished=done[b]))
            result.append(row_candidates)
        return result

    def _decode_steps(self, logits: torch.Tensor, cache: list[torch.Tensor], T0: int, lens: list[int],
                      key_ok: torch.Tensor | None, cfg: SamplingConfig, gen: torch.Generator):
        """The decode loop after the prefill: `logits` (B, V) of the first reply token. Yields each
        step's tokens (see `generate_stream`), takes rows to drop from `send`. Returns each row's
        tokens, reply length (without [SEP]), whether it ended with [SEP], and its summed
        log-probability (the closing [SEP] included). Per-row bookkeeping stays in Python lists: at
        chat batch sizes that is cheaper than a dozen tiny tensor ops per step."""
        model, dev, n = self.fast, self.device, cfg.candidates
        B = logits.shape[0]
        rows = list(range(B))  # the batch's rows still decoded (dropped ones leave it)
        positions = (torch.tensor(lens, device=dev).repeat_interleave(n)[:, None]
                     + torch.arange(cfg.max_len, device=dev))  # (B, max_len): each row's position at each step
        out: list[list[int]] = [[] for _ in range(B)]
        done, length, logp = [False] * B, [cfg.max_len] * B, [0.0] * B
        seen = torch.zeros(B, logits.shape[1], device=dev) if cfg.repetition_penalty != 1.0 else None
        penalty = -math.log(cfg.repetition_penalty)
        pad, sep = self.pad_id, self.sep_id
        for step in range(cfg.max_len):
            log_probs = F.log_softmax(logits, dim=1)  # the model's own distribution, before sampling controls
            tok = self._choose(logits, step, [out[r] for r in rows], seen, cfg, gen)
            chosen = log_probs.gather(1, tok[:, None]).view(len(rows)).tolist()
            toks = tok.tolist()
            new: list[int | None] = [None] * B
            for i, r in enumerate(rows):
                if done[r]:
                    toks[i] = pad  # a finished row holds [PAD]
                else:
                    new[r] = toks[i]
                    logp[r] += chosen[i]
                    if toks[i] == sep:
                        done[r], length[r] = True, step
                out[r].append(toks[i])
            if any(done[r] for r in rows):
                tok = torch.tensor(toks, device=dev)
            drop = yield new
            if drop:
                keep = [i for i, r in enumerate(rows) if r not in drop]
                rows = [rows[i] for i in keep]
                if not rows:
                    break
                index = torch.tensor(keep, device=dev)
                tok, positions = tok[index], positions[index]
                key_ok = None if key_ok is None else key_ok[index]
                seen = None if seen is None else seen[index]
                cache = [layer_cache.index_select(1, index) for layer_cache in cache]
            if step + 1 == cfg.max_len or all(done[r] for r in rows):
                break
            if seen is not None:
                seen.scatter_(1, tok[:, None], penalty)
            mask = None if key_ok is None else key_ok[:, None, None, :T0 + step + 1]
            logits = model.logits(model.step(tok, positions[:, step], cache, T0 + step, mask))
        return out, length, done, logp

    # -- MMI ----------------------------------------------------------------------------------

    def score_mmi(self, history: list[list[int]], candidates: list[Candidate]) -> None:
        """Set `mmi` on each candidate: the MMI model's mean NLL of the reversed history given it."""
        self.score_mmi_many([(history, candidates)])

    @torch.inference_mode()
    def score_mmi_many(self, groups: list[tuple[list[list[int]], list[Candidate]]]) -> None:
        """`score_mmi` for several (history, candidates) pairs, all in one right-padded batch."""
        if self.mmi is None:
            return
        sequences, starts, owners = [], [], []
        for history, candidates in groups:
            reversed_history = []
            for u in reversed(history):
                reversed_history.extend(u)
                reversed_history.append(self.sep_id)
            same: dict[tuple[int, ...], list[Candidate]] = {}  # identical candidates are scored once
            for cand in candidates:
                same.setdefault(tuple(cand.ids), []).append(cand)
            for ids, owner in same.items():
                head = [self.cls_id, *ids, self.sep_id]
                room = self.mmi.n_positions - len(head)
                sequences.append(head + reversed_history[:max(room, 0)])
                starts.append(len(head))
                owners.append(owner)
        if not sequences:
            return
        with torch_threads(self.threads):
            nll = self.mmi.sequence_nll(sequences, starts, self.pad_id).tolist()
        for owner, score in zip(owners, nll):
            for cand in owner:
                cand.mmi = score

    @staticmethod
    def choose(candidates: list[Candidate], use_mmi: bool) -> tuple[int | None, str]:
        """Index of the best candidate and the ranking used; None when every candidate is empty.
        With MMI: the lowest finite MMI score among non-empty candidates; when there is none, the
        non-empty candidate the dialogue model finds most likely."""
        usable = [i for i, c in enumerate(candidates) if not c.empty]
        if not usable:
            return None, "none"
        if use_mmi:
            scored = [i for i in usable if candidates[i].mmi is not None and math.isfinite(candidates[i].mmi)]
            if scored:
                return min(scored, key=lambda i: candidates[i].mmi), "mmi"
        finite = [i for i in usable if math.isfinite(candidates[i].nll)] or usable
        return min(finite, key=lambda i: candidates[i].nll), "likelihood"

    def replies(self, histories: list[list[str]] | list[list[list[int]]], sampling: SamplingConfig | None = None,
                seed: int | None = None, *, mmi: bool = True, generator: torch.Generator | None = None) -> list[Reply]:
        """One reply per history (utterances oldest first, the user's last one at the end), sampled
        together: `candidates` per history, scored by MMI when there is an MMI model and `mmi` is on,
        and the best one picked. Never empty: a history whose candidates are all empty is sampled
        again, and in the last round [SEP] may not come first."""
        return run_to_end(self.replies_stream(histories, sampling, seed, mmi=mmi, generator=generator))

    def replies_stream(self, histories: list[list[str]] | list[list[list[int]]],
                       sampling: SamplingConfig | None = None, seed: int | None = None, *, mmi: bool = True,
                       generator: torch.Generator | None = None) -> Steps:
        """`replies` as a generator: yields a `ReplyStep` after each decoding step and returns what
        `replies` returns (the same replies for the same seed). `send` it a set of history indices
        to give up (clients that went away): their rows leave the batch at once, they are not
        scored, and their entry in the result is None."""
        cfg = (sampling or SamplingConfig()).validate()
        gen = generator if generator is not None else _seed_generator(seed)
        utterances = [self.fit_history(self._as_ids(h), cfg.max_len) for h in histories]
        contexts = [self.context_ids(u) for u in utterances]
        use_mmi = mmi and self.mmi is not None
        n = cfg.candidates
        out: list[Reply | None] = [None] * len(histories)
        pending = list(range(len(histories)))
        dropped: set[int] = set()
        for attempt in range(1, MAX_RESAMPLE + 2):
            round_cfg = cfg if attempt <= MAX_RESAMPLE else replace(cfg, min_len=max(cfg.min_len, 1))
            steps = self._sample_steps([contexts[i] for i in pending], round_cfg, gen)
            drop_rows: set[int] | None = None
            try:
                while True:
                    toks = steps.send(drop_rows)
                    give_up = yield ReplyStep(attempt, {i: toks[k * n:(k + 1) * n] for k, i in enumerate(pending)
                                                        if i not in dropped})
                    drop_rows = None
                    if give_up:
                        dropped |= set(give_up)
                        drop_rows = {k * n + j for k, i in enumerate(pending) if i in give_up for j in range(n)}
            except StopIteration as end:
                sampled = end.value
            kept = [(i, cands) for i, cands in zip(pending, sampled) if i not in dropped]
            if use_mmi:
                self.score_mmi_many([(utterances[i], [c for c in cands if not c.empty]) for i, cands in kept])
            still = []
            for i, cands in kept:
                chosen, ranking = self.choose(cands, use_mmi)
                if chosen is None:
                    still.append(i)
                else:
                    out[i] = Reply(cands[chosen].text, cands, chosen, ranking, attempt)
            pending = still
            if not pending:
                break
        if pending:  # unreachable: with min_len >= 1 the first token is a character
            raise ChitchatError("the dialogue model produced only empty replies")
        return out

    def reply(self, history: list[str] | list[list[int]], sampling: SamplingConfig | None = None,
              seed: int | None = None, *, mmi: bool = True, generator: torch.Generator | None = None) -> Reply:
        """`replies` for one history."""
        return self.replies([history], sampling, seed, mmi=mmi, generator=generator)[0]

    def candidates(self, history, sampling: SamplingConfig | None = None, seed: int | None = None, *,
                   mmi: bool = True) -> list[Candidate]:
        """Sampled and (when possible) MMI-scored candidates for one history, unranked."""
        cfg = (sampling or SamplingConfig()).validate()
        utterances = self.fit_history(self._as_ids(history), cfg.max_len)
        cands = self._sample([self.context_ids(utterances)], cfg, _seed_generator(seed))[0]
        if mmi and self.mmi is not None:
            self.score_mmi(utterances, [c for c in cands if not c.empty])
        return cands
