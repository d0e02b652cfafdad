"""The generation engine: gather candidate replies (sampled in one batch with a key/value cache, and from
other candidate sources), score them and choose one by the ranking.

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
- Other sources (chitchat.engine.sources, `Engine.sources`) add their candidates to the sampled ones.
- Scoring (chitchat.engine.scoring): the scorings the ranking names (MMI, PMI, ...) are computed for
  every candidate of every history of the call, each scoring in one batched pass.
- Choosing (chitchat.engine.ranking): the reply is a non-empty candidate, a finished one (ended
  with [SEP]) before one cut at `max_len`, with the lowest score under the ranking (the setting,
  without the terms this engine cannot compute); when every candidate is empty the history is
  sampled again.

Every call takes one `ReplySettings` (chitchat.engine.settings), whole: sampling, candidate counts,
ranking, the history length the model sees, the seed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from chitchat.tokens.normalize import normalize
from chitchat.engine.fast import FastGPT2, torch_threads
from chitchat.engine.ranking import Ranking, choose, parse_ranking
from chitchat.engine.replies import Candidate, Reply, ReplyStep, Steps, run_to_end
from chitchat.engine.retrieved import RetrievalSource
from chitchat.engine.sampler import Generators, Sampler, seed_generator
from chitchat.engine.scoring import Group, score_groups, score_parts
from chitchat.engine.selector import Selector
from chitchat.engine.settings import ReplySettings
from chitchat.engine.sources import CandidateSource
from chitchat.errors import ChitchatError
from chitchat.model.gpt2 import load_model, resolve_model_dir
from chitchat.tokens.tokenizer import CLS, PAD, SEP, SPACE, UNK, text_encoder, tokenizer_tokens

MAX_RESAMPLE = 3  # rounds of sampling when every candidate came out empty
# context tokens read per prefill call: a larger batch is read in parts, with a pause before each in
# which the caller may give histories up (a server's clients that left), so one never waits long
PREFILL_TOKENS = 256
SCORE_TOKENS = 256  # tokens of candidates scored per part, for the same reason
# characters read per token wanted from a long text, and more to spare: the project's tokenizer makes
# a token of each character (one from elsewhere may make fewer: then all of the text is read)
PREFIX_CHARS, PREFIX_SPARE = 1, 32


class Engine:
    """Candidate generation and ranking over a dialogue model and an optional MMI model."""

    def __init__(self, model, tokenizer, mmi_model=None, *, int8: bool = False, device: str = "cpu",
                 threads: int | None = 1, model_path: str | None = None, mmi_path: str | None = None,
                 sources: tuple[CandidateSource, ...] = ()):
        """`threads`: torch intra-op threads while the engine runs (None: torch's setting). The
        default is 1: a decoding step is a few dozen small ops, and on a CPU shared with other
        work a second OpenMP thread that gets descheduled stalls every op, which can make replies
        many times slower. With the CPU to itself, more threads make a reply faster (bench/chat.py
        runs one thread per core and measures by how much)."""
        self.tokenizer = tokenizer
        self.encoder = text_encoder(tokenizer)  # for text `normalize` has made canonical
        self.threads = threads
        self.sources = list(sources)  # candidate sources besides sampling (chitchat.engine.sources)
        self.index_path: str | None = None  # the response index behind the source "retrieved", if any
        self.selector: Selector | None = None  # a trained selector (the scoring "selector"), if any
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
             threads: int | None = 1, index_dir=None, selector=None) -> "Engine":
        """The models in these directories; with `index_dir`, a response index whose replies are the
        source "retrieved" (its tokenizer must be the model's); with `selector`, a trained selector's
        file (the scoring "selector", chitchat.engine.selector)."""
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ChitchatError(f"device {device}: CUDA is not available")
        model, tokenizer = load_model(model_dir, device="cpu")
        mmi_model = None
        if mmi_dir is not None:
            mmi_model, mmi_tokenizer = load_model(mmi_dir, device="cpu")
            if tokenizer_tokens(mmi_tokenizer) != tokenizer_tokens(tokenizer):
                raise ChitchatError(f"{mmi_dir}: the MMI model's vocabulary differs from the dialogue model's ({model_dir})")
        model_path = resolve_model_dir(model_dir)
        sources = (RetrievalSource.load(index_dir, model_path),) if index_dir is not None else ()
        engine = cls(model, tokenizer, mmi_model, int8=int8, device=device, threads=threads,
                     model_path=str(model_path),
                     mmi_path=str(resolve_model_dir(mmi_dir)) if mmi_dir is not None else None, sources=sources)
        engine.index_path = str(index_dir) if index_dir is not None else None
        engine.selector = Selector.load(selector) if selector is not None else None
        return engine

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

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """Normalised text -> token ids (characters missing from the vocabulary become [UNK]). With
        `limit`, the first `limit` of them (exactly those of the whole text), read from a beginning of
        a long text: a long message costs what the context can hold, not its length."""
        text = normalize(text)
        if not text:
            return []
        head = None if limit is None else PREFIX_CHARS * limit + PREFIX_SPARE  # characters read first
        if head is not None and len(text) > head:
            enc = self._encoding(text[:head])
            ids, words = enc.ids, enc.word_ids
            whole = len(ids)
            while whole and words[whole - 1] == words[-1]:  # the last word may be cut short: left out
                whole -= 1
            if whole >= limit:
                return ids[:limit]
        ids = self._encoding(text).ids
        return ids if limit is None else ids[:limit]

    def _encoding(self, text: str):
        # encode_batch lets go of the GIL while it works (encode does not): the server's event loop
        # runs while its worker tokenises
        return self.encoder.encode_batch([text], add_special_tokens=False)[0]

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

    def generate(self, histories: list[list[str]] | list[list[list[int]]], settings: ReplySettings | None = None, *,
                 generator: torch.Generator | None = None) -> list[list[Candidate]]:
        """`settings.candidates` sampled replies for each history (a list of utterances, oldest first;
        text, or token ids from `encode`), all in one batch. No other source, no scoring here."""
        return run_to_end(self.generate_stream(histories, settings, generator=generator))

    def generate_stream(self, histories: list[list[str]] | list[list[list[int]]],
                        settings: ReplySettings | None = None, *, generator: torch.Generator | None = None) -> Steps:
        """`generate` as a generator: after each decoding step it yields the new token of every row
        of the batch (row `i * candidates + j` is history i's candidate j; None for a row that had
        already ended; [SEP] ends a row; None for a pause before each part of a large batch's
        prefill), and it returns what `generate` returns: the same sampling, the same random draws,
        the same candidates. `send` it a set of rows to stop decoding
        (`replies_stream` does so for a client that went away): they leave the batch."""
        cfg = (settings or ReplySettings()).validate()
        gen = generator if generator is not None else seed_generator(cfg.seed)
        contexts = [self.context_ids(self.prompt(h, cfg)) for h in histories]
        return self._sample_steps(contexts, cfg, gen)

    def prompt(self, history, settings: ReplySettings) -> list[list[int]]:
        """The utterances (token ids) the model sees of `history`: its last `max_history_len`, then the
        most recent of those that fit the model's positions with a reply of `max_len`."""
        limit = self.context_budget(settings.max_len)  # more of one utterance could never be seen
        return self.fit_history(self._as_ids(history[-settings.max_history_len:], limit), settings.max_len)

    def ranking_for(self, ranking: "str | Ranking") -> Ranking:
        """The ranking replies are chosen by on this engine: `ranking` without the terms it cannot
        compute (an MMI term without an MMI model), else likelihood."""
        return parse_ranking(ranking).usable(self)

    def streams(self, settings: ReplySettings) -> bool:
        """Whether a reply is known as it is written: one sampled candidate and no other source's."""
        return settings.candidates == 1 and all(getattr(settings, s.count) == 0 for s in self.sources)

    def _as_ids(self, history, limit: int | None = None) -> list[list[int]]:
        return [u if isinstance(u, list) else self.encode(u, limit) for u in history]

    @torch.inference_mode()
    def _sample_steps(self, contexts: list[list[int]], cfg: ReplySettings, gen: torch.Generator) -> Steps:
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
                per_call, last, gone = max(1, PREFILL_TOKENS // T0), [], set()
                for a in range(0, C, per_call):
                    if per_call < C:  # a pause before each part (yields None): rows given up meanwhile are not read
                        gone |= set((yield None) or ())
                        if len(gone) == B:
                            return [[] for _ in range(C)]
                    b, kv = min(C, a + per_call), []
                    h = model.hidden(ids[a:b], positions[a:b], mask=None if prefill_mask is None else prefill_mask[a:b],
                                     keys=kv, skip=T0 - 1)  # the last position's state
                    for layer_cache, layer_kv in zip(cache, kv):  # each context's keys, shared by its candidates
                        layer_cache.view(2, C, n, *layer_cache.shape[2:])[:, a:b, :, :, :T0] = layer_kv.unsqueeze(2)
                    last.append(model.logits(h[:, -1]))
                logits = torch.cat(last).repeat_interleave(n, 0)
                out, length, done, logp = yield from self._decode_steps(logits, cache, T0, lens, key_ok, cfg, gen, gone)
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
                row_candidates.append(Candidate(self.decode(reply_ids), reply_ids, "sampled", finished=done[b],
                                                scores={"likelihood": -logp[b] / max(scored, 1)}))
            result.append(row_candidates)
        return result

    def _decode_steps(self, logits: torch.Tensor, cache: list[torch.Tensor], T0: int, lens: list[int],
                      key_ok: torch.Tensor | None, cfg: ReplySettings, gen: torch.Generator, gone: set[int]):
        """The decode loop after the prefill: `logits` (B, V) of the first reply token, `gone` rows
        given up during the prefill. Yields each step's tokens (see `generate_stream`), takes rows to
        drop from `send`. Returns each row's
        tokens, reply length (without [SEP]), whether it ended with [SEP], and its summed
        log-probability (the closing [SEP] included). Per-row bookkeeping stays in Python lists: at
        chat batch sizes that is cheaper than a dozen tiny tensor ops per step."""
        model, dev, n = self.fast, self.device, cfg.candidates
        B = logits.shape[0]
        rows = list(range(B))  # the batch's rows still decoded (dropped ones leave it)
        positions = (torch.tensor(lens, device=dev).repeat_interleave(n)[:, None]
                     + torch.arange(cfg.max_len, device=dev))  # (B, max_len): each row's position at each step
        if gone:
            rows = [r for r in rows if r not in gone]
            index = torch.tensor(rows, device=dev)
            logits, positions = logits[index], positions[index]
            key_ok = None if key_ok is None else key_ok[index]
            cache = [layer_cache.index_select(1, index) for layer_cache in cache]
        out: list[list[int]] = [[] for _ in range(B)]
        done, length, logp = [False] * B, [cfg.max_len] * B, [0.0] * B
        seen = torch.zeros(len(rows), logits.shape[1], device=dev) if cfg.repetition_penalty != 1.0 else None
        penalty = -math.log(cfg.repetition_penalty)
        pad, sep = self.pad_id, self.sep_id
        for step in range(cfg.max_len):
            log_probs = F.log_softmax(logits, dim=1)  # the model's own distribution, before sampling controls
            owners = [r // n for r in rows] if isinstance(gen, Generators) else None  # each row's history
            tok = self.sampler.next_tokens(logits, step, [out[r] for r in rows], seen, cfg, gen, owners)
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

    # -- scoring and choosing ------------------------------------------------------------------

    def score(self, groups: list[Group], names) -> None:
        """Compute scorings `names` (chitchat.engine.scoring) for the candidates of every group."""
        score_groups(self, groups, names)

    def replies(self, histories: list[list[str]] | list[list[list[int]]], settings: ReplySettings | None = None, *,
                generator: torch.Generator | None = None) -> list[Reply]:
        """One reply per history (utterances oldest first, the user's last one at the end), made
        together: `candidates` sampled per history plus the other sources' (`Engine.sources`), scored
        as the ranking needs, and the best one picked. The seed is `settings.seed` unless a
        `generator` is given. Never empty: a history whose candidates are all empty is sampled
        again, and in the last round [SEP] may not come first."""
        return run_to_end(self.replies_stream(histories, settings, generator=generator))

    def replies_stream(self, histories: list[list[str]] | list[list[list[int]]],
                       settings: ReplySettings | None = None, *, generator: torch.Generator | None = None) -> Steps:
        """`replies` as a generator: yields a `ReplyStep` after each decoding step (and an empty one
        in each pause: before each part of a large prefill, before scoring, between the parts of a
        large scoring) and returns what `replies` returns (the same replies for the same seed). `send` it a set of history indices
        to give up (clients that went away): their rows leave the batch at once, they are not
        scored, and their entry in the result is None. `generator` may be `Generators`, one per
        history (each history then gets the replies its own generator gives alone, when
        `shared_width(settings)`)."""
        cfg = (settings or ReplySettings()).validate()
        gen = generator if generator is not None else seed_generator(cfg.seed)
        utterances = [self.prompt(h, cfg) for h in histories]
        contexts = [self.context_ids(u) for u in utterances]
        rank = self.ranking_for(cfg.ranking)
        gathered = self._gather(histories, cfg)
        n = cfg.candidates
        out: list[Reply | None] = [None] * len(histories)
        pending = list(range(len(histories)))
        dropped: set[int] = set()
        for attempt in range(1, MAX_RESAMPLE + 2):
            round_cfg = cfg if attempt <= MAX_RESAMPLE else replace(cfg, min_len=max(cfg.min_len, 1))
            sampled: list[list[Candidate]] = [[] for _ in pending]
            if n:
                round_gen = Generators(gen[i] for i in pending) if isinstance(gen, Generators) else gen
                steps = self._sample_steps([contexts[i] for i in pending], round_cfg, round_gen)
                drop_rows: set[int] | None = None
                try:
                    while True:
                        toks = steps.send(drop_rows)  # None: a pause in the prefill, no tokens yet
                        give_up = yield ReplyStep(attempt, {} if toks is None else {
                            i: toks[k * n:(k + 1) * n] for k, i in enumerate(pending) if i not in dropped})
                        drop_rows = None
                        if give_up:
                            dropped |= set(give_up)
                            drop_rows = {k * n + j for k, i in enumerate(pending) if i in give_up for j in range(n)}
                except StopIteration as end:
                    sampled = end.value
                give_up = yield ReplyStep(attempt, {})  # sampled: a last chance to give up before scoring
                dropped |= set(give_up or ())
            kept = [(i, cands + gathered[i]) for i, cands in zip(pending, sampled) if i not in dropped]
            for k, part in enumerate(score_parts([Group(utterances[i], c) for i, c in kept], SCORE_TOKENS)):
                if k:  # a pause between parts: histories given up meanwhile are scored no further
                    dropped |= set((yield ReplyStep(attempt, {})) or ())
                if part := [g for owner, g in part if kept[owner][0] not in dropped]:
                    self.score(part, rank.names)
            kept = [(i, cands) for i, cands in kept if i not in dropped]
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
            if not n:  # nothing to sample again
                raise ChitchatError("no candidate: none is sampled (candidates 0) and the other sources gave none "
                                    f"({', '.join(s.name for s in self.sources) or 'this model has no response index'})")
        if pending:  # unreachable: with min_len >= 1 the first token is a character
            raise ChitchatError("the dialogue model produced only empty replies")
        return out

    def _gather(self, histories, cfg: ReplySettings) -> list[list[Candidate]]:
        """Each history's candidates from the other sources (none when their counts are 0)."""
        gathered: list[list[Candidate]] = [[] for _ in histories]
        texts = None
        for source in self.sources:
            count = getattr(cfg, source.count)
            if not count:
                continue
            if texts is None:
                texts = [[u if isinstance(u, str) else self.decode(u) for u in h[-cfg.max_history_len:]]
                         for h in histories]
            for mine, found in zip(gathered, source.gather(self, texts, count, cfg.max_len)):
                mine.extend(found[:count])
        return gathered

    def reply(self, history: list[str] | list[list[int]], settings: ReplySettings | None = None, *,
              generator: torch.Generator | None = None) -> Reply:
        """`replies` for one history."""
        return self.replies([history], settings, generator=generator)[0]
