"""The generation engine: sample candidate replies in one batch with a key/value cache, rank them by MMI.

No terminal code here: the chat REPL, the evaluator and the server all drive `Engine`.

- `FastGPT2` runs GPT-2 inference over weights taken once from a `transformers` model: fused QKV,
  weights contiguous in the layout the matmul wants, a preallocated key/value cache, no autograd and
  no framework bookkeeping. At batch 1 a decode step is bound by reading the weights and by per-op
  overhead; `transformers`' own `generate` with its cache takes 2 to 3 times as long for one reply
  (bench/chat.py prints both; torch.compile made a step slower and took 40 s to compile, so it is
  not used). `tests/test_generate.py` checks the logits against `transformers`.
- `Engine.generate` samples `candidates` replies for each of several histories: histories are
  left-padded into one batch, each is read once (prefill), its cache rows are shared by its
  candidates, and every step feeds one new token per row. A candidate ends at [SEP] or at `max_len`.
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
  history tokens only (their [SEP]s included), all candidates in one right-padded batch.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from chitchat.errors import ChitchatError
from chitchat.normalize import normalize
from chitchat.quantize import Fp32Linear, Int8Linear, check_int8
from chitchat.tokenizer import CLS, PAD, SEP, SPACE, UNK

MAX_RESAMPLE = 3  # rounds of sampling when every candidate came out empty


@dataclass
class SamplingConfig:
    """How candidates are sampled. 0 disables top_k, top_p and no_repeat_ngram_size."""

    temperature: float = 1.0
    top_k: int = 8
    top_p: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_len: int = 1
    max_len: int = 25
    candidates: int = 5

    def validate(self) -> "SamplingConfig":
        problems = []
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            problems.append(f"temperature {self.temperature} must be > 0")
        if self.top_k < 0:
            problems.append(f"top_k {self.top_k} must be >= 0")
        if not 0 <= self.top_p <= 1:
            problems.append(f"top_p {self.top_p} must be in [0, 1]")
        if not (self.repetition_penalty >= 1 and math.isfinite(self.repetition_penalty)):
            problems.append(f"repetition_penalty {self.repetition_penalty} must be >= 1")
        if self.no_repeat_ngram_size < 0:
            problems.append(f"no_repeat_ngram_size {self.no_repeat_ngram_size} must be >= 0")
        if self.max_len < 1:
            problems.append(f"max_len {self.max_len} must be >= 1")
        if not 0 <= self.min_len <= self.max_len:
            problems.append(f"min_len {self.min_len} must be in [0, max_len={self.max_len}]")
        if self.candidates < 1:
            problems.append(f"candidates {self.candidates} must be >= 1")
        if problems:
            raise ChitchatError("; ".join(problems))
        return self


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

    def new_cache(self, batch: int, length: int) -> list[torch.Tensor]:
        """Per layer, keys and values: (2, batch, heads, length, head_dim)."""
        return [torch.empty(2, batch, self.n_head, length, self.head_dim, device=self.device) for _ in range(self.n_layer)]

    def hidden(self, ids: torch.Tensor, positions: torch.Tensor, *, cache: list[torch.Tensor] | None = None,
               start: int = 0, mask: torch.Tensor | None = None, keys: list | None = None) -> torch.Tensor:
        """Final hidden states (B, S, D) of tokens `ids` (B, S) at `positions` (B, S).

        With `cache`, this chunk's keys/values are written at [start, start+S) and attention reads
        [0, start+S); otherwise the chunk attends to itself, causally. `mask` (bool, broadcastable to
        (B, 1, S, keys)) says which keys each query may see; None means all earlier ones. With `keys`
        (a list), each layer's (2, B, H, S, Dh) keys/values are appended to it.
        """
        B, S = ids.shape
        D, H, Dh = self.d, self.n_head, self.head_dim
        x = (F.embedding(ids, self.wte) + F.embedding(positions, self.wpe)).view(B * S, D)
        causal = mask is None and S > 1
        for (ln1, qkv_proj, out_proj, ln2, fc, fc_out), layer_cache in zip(
                self.layers, cache if cache is not None else [None] * self.n_layer):
            h = F.layer_norm(x, (D,), ln1[0], ln1[1], self.eps)
            qkv = qkv_proj(h).view(B, S, 3, H, Dh).permute(2, 0, 3, 1, 4)  # (3, B, H, S, Dh)
            if keys is not None:
                keys.append(qkv[1:])
            if layer_cache is not None:
                layer_cache[:, :, :, start:start + S] = qkv[1:]
                k, v = layer_cache[0, :, :, :start + S], layer_cache[1, :, :, :start + S]
            else:
                k, v = qkv[1], qkv[2]
            a = F.scaled_dot_product_attention(qkv[0], k, v, attn_mask=mask, is_causal=causal)
            x = x + out_proj(a.transpose(1, 2).reshape(B * S, D))
            h = F.layer_norm(x, (D,), ln2[0], ln2[1], self.eps)
            x = x + fc_out(_gelu_tanh(fc(h)))
        return F.layer_norm(x, (D,), self.ln_f[0], self.ln_f[1], self.eps).view(B, S, D)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, D) hidden states -> (N, V) logits."""
        return self.head(hidden)

    @torch.inference_mode()
    def sequence_nll(self, sequences: list[list[int]], starts: list[int], pad_id: int = 0) -> torch.Tensor:
        """Mean negative log-likelihood of `seq[start:]` given `seq[:start]`, for each sequence, in one
        right-padded batch (causal attention never looks right, so padding needs no mask). NaN where a
        sequence has nothing to score."""
        n = len(sequences)
        if n == 0:
            return torch.zeros(0)
        width = max(len(s) for s in sequences)
        if width > self.n_positions:
            raise ChitchatError(f"sequence of {width} tokens exceeds the model's {self.n_positions} positions")
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        rows, cols, targets = [], [], []
        for i, (seq, start) in enumerate(zip(sequences, starts)):
            ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            for p in range(max(start, 1), len(seq)):
                rows.append(i)
                cols.append(p - 1)
                targets.append(seq[p])
        ids = ids.to(self.device)
        positions = torch.arange(width, device=self.device).expand(n, width)
        h = self.hidden(ids, positions)
        rows_t = torch.tensor(rows, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            logits = self.logits(h[rows_t, torch.tensor(cols, dtype=torch.long, device=self.device)])
            nll = F.cross_entropy(logits, torch.tensor(targets, dtype=torch.long, device=self.device), reduction="none")
            total = torch.zeros(n, device=self.device).index_add_(0, rows_t, nll)
            count = torch.zeros(n, device=self.device).index_add_(0, rows_t, torch.ones_like(nll))
            return (total / count).cpu()  # 0/0 -> NaN for a sequence with nothing to score


class Engine:
    """Candidate generation and ranking over a dialogue model and an optional MMI model."""

    def __init__(self, model, tokenizer, mmi_model=None, *, int8: bool = False, device: str = "cpu",
                 threads: int | None = 1, model_path: str | None = None, mmi_path: str | None = None):
        """`threads`: torch intra-op threads while the engine runs (None: torch's setting). The
        default is 1: a decoding step is a few dozen small ops, and on a CPU shared with other
        work a second OpenMP thread that gets descheduled stalls every op (measured here: 2 threads
        made replies up to 10x slower while another process kept one of the 2 cores busy)."""
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
        from chitchat.modeling import load_model, resolve_model_dir
        from chitchat.tokenizer import tokenizer_tokens

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

    def _choose(self, logits: torch.Tensor, step: int, out: torch.Tensor, seen: torch.Tensor | None,
                cfg: SamplingConfig, gen: torch.Generator) -> torch.Tensor:
        """Next token per row from raw logits (B, V), modified in place."""
        logits += self._bans[step == 0, step < cfg.min_len]
        if seen is not None:
            logits += seen
        n = cfg.no_repeat_ngram_size
        if n and step >= n - 1:
            for row, toks in enumerate(out[:, :step].tolist()):
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
        cfg = (sampling or SamplingConfig()).validate()
        gen = generator if generator is not None else _seed_generator(seed)
        contexts = [self.context_ids(self.fit_history(self._as_ids(h), cfg.max_len)) for h in histories]
        return self._sample(contexts, cfg, gen)

    def _as_ids(self, history) -> list[list[int]]:
        return [u if isinstance(u, list) else self.encode(u) for u in history]

    @torch.inference_mode()
    def _sample(self, contexts: list[list[int]], cfg: SamplingConfig, gen: torch.Generator) -> list[list[Candidate]]:
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
        cache = model.new_cache(B, total)
        kv: list[torch.Tensor] = []
        with torch_threads(self.threads):
            h = model.hidden(ids, positions, mask=prefill_mask, keys=kv)
            for layer_cache, layer_kv in zip(cache, kv):  # each context's keys, shared by its candidates
                layer_cache.view(2, C, n, *layer_cache.shape[2:])[:, :, :, :, :T0] = layer_kv.unsqueeze(2)
            logits = model.logits(h[:, -1]).repeat_interleave(n, 0)
        next_pos = torch.tensor(lens, device=dev).repeat_interleave(n)[:, None]  # (B, 1)
        out = torch.full((B, cfg.max_len), self.pad_id, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        length = torch.full((B,), cfg.max_len, dtype=torch.long, device=dev)
        logp = torch.zeros(B, device=dev)
        seen = torch.zeros(B, logits.shape[1], device=dev) if cfg.repetition_penalty != 1.0 else None
        penalty = -math.log(cfg.repetition_penalty)
        steps = 0
        with torch_threads(self.threads):
            for step in range(cfg.max_len):
                log_probs = F.log_softmax(logits, dim=1)  # the model's own distribution, before sampling controls
                tok = self._choose(logits, step, out, seen, cfg, gen)
                logp += log_probs.gather(1, tok[:, None]).squeeze(1).masked_fill_(done, 0.0)
                tok.masked_fill_(done, self.pad_id)
                out[:, step] = tok
                ended = tok == self.sep_id  # rows already done hold [PAD]
                length.masked_fill_(ended, step)
                done |= ended
                steps = step + 1
                if steps == cfg.max_len or bool(done.all()):
                    break
                if seen is not None:
                    seen.scatter_(1, tok[:, None], penalty)
                mask = None if key_ok is None else key_ok[:, None, None, :T0 + steps]
                h = model.hidden(tok[:, None], next_pos + step, cache=cache, start=T0 + step, mask=mask)
                logits = model.logits(h[:, 0])
        out, length, done, logp = out[:, :steps].cpu(), length.tolist(), done.tolist(), logp.tolist()
        if not all(math.isfinite(x) for x in logp):
            raise ChitchatError("the dialogue model produced invalid (NaN or infinite) probabilities")
        result: list[list[Candidate]] = []
        for c in range(C):
            row_candidates = []
            for j in range(n):
                b = c * n + j
                reply_ids = out[b, :length[b]].tolist()
                scored = length[b] + (1 if done[b] else 0)  # the closing [SEP] counts
                row_candidates.append(Candidate(self.decode(reply_ids), reply_ids, -logp[b] / max(scored, 1),
                                                finished=done[b]))
            result.append(row_candidates)
        return result

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
        cfg = (sampling or SamplingConfig()).validate()
        gen = generator if generator is not None else _seed_generator(seed)
        utterances = [self.fit_history(self._as_ids(h), cfg.max_len) for h in histories]
        contexts = [self.context_ids(u) for u in utterances]
        use_mmi = mmi and self.mmi is not None
        out: list[Reply | None] = [None] * len(histories)
        pending = list(range(len(histories)))
        for attempt in range(1, MAX_RESAMPLE + 2):
            round_cfg = cfg if attempt <= MAX_RESAMPLE else replace(cfg, min_len=max(cfg.min_len, 1))
            sampled = self._sample([contexts[i] for i in pending], round_cfg, gen)
            if use_mmi:
                self.score_mmi_many([(utterances[i], [c for c in cands if not c.empty]) for i, cands in zip(pending, sampled)])
            still = []
            for i, cands in zip(pending, sampled):
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
        return out  # type: ignore[return-value]

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
