"""The generation engine: sample candidate replies in one batch with a key/value cache, rank them by MMI.

No terminal code here: the chat REPL, the evaluator and the server all drive `Engine`. The model
runs in `FastGPT2` (fast.py), the next token is chosen by `Sampler` (sampler.py), and what comes
back is described in replies.py.

- `Engine.generate` samples `candidates` replies for each of several histories: histories are
  left-padded into one batch, each is read once (prefill), its cache rows are shared by its
  candidates, and every step feeds one new token per row. A candidate ends at [SEP] or at `max_len`.
  Per-row bookkeeping stays in Python lists rather than a dozen tiny tensor ops a step.
- Streaming: `generate_stream` and `replies_stream` are the same loops as generators, yielding each
  decoding step's new tokens; `generate` and `replies` drive them to the end, so both forms give
  the same candidates for the same seed. A history given up (`send`) leaves the batch: its rows
  are cut out of the key/value cache and the decoding goes on with the others.
- MMI: each candidate is scored by the MMI model's mean negative log-likelihood of the reversed
  history given the candidate, `[CLS] candidate [SEP] u_n [SEP] ... u_1 [SEP]`, counted on the
  history tokens only (their [SEP]s included), all candidates in one right-padded batch. Only the
  positions that are scored go through the last layer's attention output and MLP, and the output
  layer (about a third of the work) only at them.
- PMI: when the ranking needs it, each candidate is also scored given no context (`[CLS] candidate
  [SEP]`), all in one batch (`score_empty_many`).
- Choosing (chitchat.engine.ranking): the reply is a non-empty candidate, a finished one (ended
  with [SEP]) before one cut at `max_len`, with the lowest score under the ranking (`ranking`,
  default `DEFAULT_RANKING`; MMI off: likelihood); when every candidate is empty the history is
  sampled again.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from chitchat.corpus.normalize import normalize
from chitchat.engine.fast import FastGPT2, torch_threads
from chitchat.engine.ranking import LIKELIHOOD, Ranking, choose, effective_ranking
from chitchat.engine.replies import Candidate, Reply, ReplyStep, Steps, run_to_end
from chitchat.engine.sampler import Sampler, seed_generator
from chitchat.errors import ChitchatError
from chitchat.model.gpt2 import load_model, resolve_model_dir
from chitchat.model.sampling import SamplingConfig
from chitchat.tokens.tokenizer import CLS, PAD, SEP, SPACE, UNK, tokenizer_tokens

MAX_RESAMPLE = 3  # rounds of sampling when every candidate came out empty


class Engine:
    """Candidate generation and ranking over a dialogue model and an optional MMI model."""

    def __init__(self, model, tokenizer, mmi_model=None, *, int8: bool = False, device: str = "cpu",
                 threads: int | None = 1, model_path: str | None = None, mmi_path: str | None = None):
        """`threads`: torch intra-op threads while the engine runs (None: torch's setting). The
        default is 1: a decoding step is a few dozen small ops, and on a CPU shared with other
        work a second OpenMP thread that gets descheduled stalls every op, which can make replies
        many times slower. With the CPU to itself, more threads make a reply faster (bench/chat.py
        runs one thread per core and measures by how much)."""
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
        never = [i for i in (self.pad_id, self.unk_id, self.cls_id) if i is not None]
        self.sampler = Sampler(V, len(self.vocab), never=never, space_id=self.space_id, sep_id=self.sep_id,
                               device=self.device)

    @classmethod
    def load(cls, model_dir, mmi_dir=None, *, int8: bool = False, device: str = "cpu",
             threads: int | None = 1) -> "Engine":
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

    def with_threads(self, threads: int | None) -> "Engine":
        """This engine, its models shared, with another `threads` setting. Calls may run at once on
        several threads (each borrows its own buffers); with `threads` None each such thread sets
        its own torch thread count (a server's lanes run one thread each)."""
        view = copy.copy(self)
        view.threads = threads
        return view

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

    # -- the batched sampling loops ------------------------------------------------------------

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
        gen = generator if generator is not None else seed_generator(seed)
        contexts = [self.context_ids(self.fit_history(self._as_ids(h), cfg.max_len)) for h in histories]
        return self._sample_steps(contexts, cfg, gen)

    def _as_ids(self, history) -> list[list[int]]:
        return [u if isinstance(u, list) else self.encode(u) for u in history]

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
            tok = self.sampler.next_tokens(logits, step, [out[r] for r in rows], seen, cfg, gen)
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

    @torch.inference_mode()
    def score_empty_many(self, candidates: list[Candidate]) -> None:
        """Set `nll_empty` on each candidate: the dialogue model's mean NLL of it given no context,
        `[CLS] candidate [SEP]` (no [SEP] for one cut at max_len, as its `nll` counts none), all in
        one batch; identical candidates are scored once."""
        same: dict[tuple[tuple[int, ...], bool], list[Candidate]] = {}
        for cand in candidates:
            same.setdefault((tuple(cand.ids), cand.finished), []).append(cand)
        if not same:
            return
        sequences = [[self.cls_id, *ids, *([self.sep_id] if finished else [])] for ids, finished in same]
        with torch_threads(self.threads):
            nll = self.fast.sequence_nll(sequences, [1] * len(sequences), self.pad_id).tolist()
        for owner, score in zip(same.values(), nll):
            for cand in owner:
                cand.nll_empty = score

    def score_for(self, ranking: Ranking, groups: list[tuple[list[list[int]], list[Candidate]]]) -> None:
        """The scores `ranking` needs of each (history, non-empty candidates) group, in batches."""
        if ranking.needs_mmi:
            self.score_mmi_many(groups)
        if ranking.needs_empty:
            self.score_empty_many([c for _, cands in groups for c in cands])

    @staticmethod
    def choose(candidates: list[Candidate], use_mmi: bool = True,
               ranking: Ranking | str | None = None) -> tuple[int | None, str]:
        """Index of the best candidate and the ranking used; None when every candidate is empty.
        `ranking` (chitchat.engine.ranking) None: MMI when `use_mmi`, else likelihood. Finished
        candidates first, then the lowest finite score; when none has one, the most likely."""
        if ranking is None:
            ranking = "mmi" if use_mmi else LIKELIHOOD
        return choose(candidates, ranking)

    def replies(self, histories: list[list[str]] | list[list[list[int]]], sampling: SamplingConfig | None = None,
                seed: int | None = None, *, mmi: bool = True, generator: torch.Generator | None = None,
                ranking: Ranking | str | None = None) -> list[Reply]:
        """One reply per history (utterances oldest first, the user's last one at the end), sampled
        together: `candidates` per history, scored as `ranking` needs (None: the default ranking;
        `mmi` off: likelihood; no MMI model: the ranking without MMI), and the best one picked.
        Never empty: a history whose candidates are all empty is sampled again, and in the last
        round [SEP] may not come first."""
        return run_to_end(self.replies_stream(histories, sampling, seed, mmi=mmi, generator=generator,
                                              ranking=ranking))

    def replies_stream(self, histories: list[list[str]] | list[list[list[int]]],
                       sampling: SamplingConfig | None = None, seed: int | None = None, *, mmi: bool = True,
                       generator: torch.Generator | None = None, ranking: Ranking | str | None = None) -> Steps:
        """`replies` as a generator: yields a `ReplyStep` after each decoding step and returns what
        `replies` returns (the same replies for the same seed). `send` it a set of history indices
        to give up (clients that went away): their rows leave the batch at once, they are not
        scored, and their entry in the result is None."""
        cfg = (sampling or SamplingConfig()).validate()
        gen = generator if generator is not None else seed_generator(seed)
        utterances = [self.fit_history(self._as_ids(h), cfg.max_len) for h in histories]
        contexts = [self.context_ids(u) for u in utterances]
        rank = effective_ranking(ranking, mmi, self.mmi is not None)
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
            self.score_for(rank, [(utterances[i], [c for c in cands if not c.empty]) for i, cands in kept])
            still = []
            for i, cands in kept:
                chosen, used = choose(cands, rank)
                if chosen is None:
                    still.append(i)
                else:
                    out[i] = Reply(cands[chosen].text, cands, chosen, used, attempt)
            pending = still
            if not pending:
                break
        if pending:  # unreachable: with min_len >= 1 the first token is a character
            raise ChitchatError("the dialogue model produced only empty replies")
        return out

    def reply(self, history: list[str] | list[list[int]], sampling: SamplingConfig | None = None,
              seed: int | None = None, *, mmi: bool = True, generator: torch.Generator | None = None,
              ranking: Ranking | str | None = None) -> Reply:
        """`replies` for one history."""
        return self.replies([history], sampling, seed, mmi=mmi, generator=generator, ranking=ranking)[0]
