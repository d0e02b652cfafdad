"""`ResponseIndex`: (context, reply) pairs behind a sparse TF-IDF index of their contexts.

A pair's context is two rows of features: its last utterance, and the bag of its earlier turns. Both
live in one inverted index (term -> the pairs that have it, with their weights: rows 0..T-1 for the
last utterances, T..2T-1 for the earlier turns), so a query reads only its own terms' postings:

    score(pair) = cos(query's last utterance, pair's last) + history_weight * cos(query's earlier turns, pair's)

On disk, a directory beside a model, no pickle: `meta.json` (format version, settings, the tokenizer
it was built for, counts, every file's size), `terms.txt` and `texts.txt` (one term, one utterance a
line, UTF-8) and numpy `.npy` arrays, memory-mapped when loaded: the postings (`postings_indptr`,
`postings_pairs`, `postings_weights`), `idf`, `text_offsets` (byte offsets of the lines of
texts.txt) and per pair `reply`, `context` (its utterances, newest first, -1 where it has fewer) and
`source` (its corpus file, named in meta.json).
"""

from __future__ import annotations

import json
import tempfile
import time
from array import array
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Sequence

import jieba
import numpy as np
import scipy.sparse as sp

from chitchat.corpus.readers import expand_inputs
from chitchat.errors import ChitchatError
from chitchat.retrieval.analyze import count_matrix, features, idf_of, tfidf_rows
from chitchat.retrieval.config import IndexConfig
from chitchat.retrieval.pairs import Pair, PairStats, read_pairs
from chitchat.tokens.dataset import commit_dataset_dir
from chitchat.tokens.normalize import normalize
from chitchat.tokens.tokenizer import SPACE, read_vocab, vocab_hash

FORMAT_VERSION = 1
KIND = "chitchat response index"
META, TERMS, TEXTS = "meta.json", "terms.txt", "texts.txt"
ARRAYS = ("postings_indptr", "postings_pairs", "postings_weights", "idf", "text_offsets", "reply", "context", "source")
MIN_DROPPED_DF = 1_000  # max_df drops a feature only when its postings are long enough to cost time


@dataclass(frozen=True)
class Hit:
    reply: str
    score: float
    pair: int  # the pair's number in the index
    context: tuple[str, ...]  # the pair's context as indexed, oldest first
    source: str  # the corpus file the pair came from


def model_tokens(path: str | Path) -> list[str]:
    """The vocabulary, in id order, of a model directory's tokenizer.json, a tokenizer.json or a vocab.txt
    (read as JSON: no transformers needed)."""
    p = Path(path)
    p = p / "tokenizer.json" if p.is_dir() else p
    if p.suffix == ".txt":
        return read_vocab(p)
    try:
        vocab = json.loads(p.read_text(encoding="utf-8"))["model"]["vocab"]
        return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    except FileNotFoundError:
        raise ChitchatError(f"{p}: no such tokenizer (give a model directory, its tokenizer.json or a vocab.txt)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ChitchatError(f"{p}: not a readable tokenizer.json ({type(e).__name__})") from None


def tokenizer_identity(path: str | Path) -> str:
    """What an index records as the tokenizer it was built for: the project's vocabulary hash
    (`chitchat.tokens.tokenizer.vocab_hash`, as datasets record it)."""
    return vocab_hash(model_tokens(path))


def _lines_blob(lines: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of `lines`, each ended by a newline, and the byte offset where each starts (and the end)."""
    data = [line.encode("utf-8") + b"\n" for line in lines]
    offsets = np.zeros(len(data) + 1, np.int64)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return np.frombuffer(b"".join(data), np.uint8), offsets


def _misfit(meta: dict, terms: list[str], texts: np.ndarray, a: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """(file, what) of the first thing in a loaded index that does not fit the rest: checked before any
    use, since a sparse product trusts its offsets and numbers. Each check assumes the ones before it."""
    counts, h, t, n = meta["counts"], meta["config"]["max_history"], len(terms), len(a["reply"])
    indptr, pairs, offsets, ctx = a["postings_indptr"], a["postings_pairs"], a["text_offsets"], a["context"]
    checks = [
        (TERMS, "terms", lambda: len(a["idf"]) == t == counts["terms"]),
        ("idf.npy", "one idf per term", lambda: a["idf"].dtype == np.float32 and a["idf"].shape == (t,)),
        ("reply.npy", "pairs", lambda: a["reply"].dtype == np.int32 and a["reply"].shape == (n,) and n == counts["pairs"] > 0),
        ("context.npy", "shape", lambda: ctx.shape == (n, h) and ctx.dtype == np.int32),
        ("source.npy", "sources", lambda: a["source"].shape == (n,) and 0 <= a["source"].min()
         and a["source"].max() < len(meta["sources"])),
        ("postings_indptr.npy", "offsets", lambda: indptr.shape == (2 * t + 1,) and indptr[0] == 0
         and bool(np.all(np.diff(indptr) >= 0)) and indptr[-1] == len(pairs) == len(a["postings_weights"])),
        ("postings_pairs.npy", "pair numbers", lambda: pairs.dtype == np.int32 and (not len(pairs) or (0 <= pairs.min() and pairs.max() < n))),
        ("postings_weights.npy", "type", lambda: a["postings_weights"].dtype == np.float32),
        ("text_offsets.npy", "offsets", lambda: offsets[0] == 0 and offsets[-1] == len(texts) and bool(np.all(np.diff(offsets) > 0))),
        ("reply.npy", "utterance numbers", lambda: 0 <= a["reply"].min() and a["reply"].max() < len(offsets) - 1),
        ("context.npy", "utterance numbers", lambda: ctx.max() < len(offsets) - 1 and ctx[:, 0].min() >= 0),
    ]
    return next(((f, what) for f, what, ok in checks if not ok()), None)


class ResponseIndex:
    def __init__(self, meta: dict, terms: list[str], texts: np.ndarray, arrays: dict[str, np.ndarray],
                 path: Path | None = None):
        self.meta, self.path = meta, path  # path: the directory it was loaded from
        self.config = IndexConfig(**meta["config"])
        self.terms, self.texts, self.arrays = terms, texts, arrays  # texts: the bytes of texts.txt
        self.vocab = dict(zip(terms, range(len(terms))))
        self.sources = meta["sources"]
        for name in ARRAYS:  # each array as the attribute of its name: self.reply, self.postings_pairs, ...
            setattr(self, name, arrays[name])
        # the postings as a CSR matrix over the same memory (2 x terms rows, a column per pair)
        self.postings = sp.csr_matrix((self.postings_weights, self.postings_pairs, self.postings_indptr),
                                      shape=(2 * len(terms), len(self.reply)), copy=False)

    def __len__(self) -> int:
        return len(self.reply)

    # -- build -------------------------------------------------------------------------------------

    @classmethod
    def build(cls, pairs: Iterable[Pair], cfg: IndexConfig, tokenizer: str | None = None) -> "ResponseIndex":
        """Index `pairs` (see `read_pairs`); `tokenizer` is the identity of the model's tokenizer it is
        meant for (`tokenizer_identity`), recorded in meta.json."""
        cfg.check()
        h = cfg.max_history
        texts: dict[str, int] = {}  # every utterance once: replies and contexts
        sources: dict[str, int] = {}
        reply, context, source = array("i"), array("i"), array("i")
        for p in pairs:
            reply.append(texts.setdefault(p.reply, len(texts)))
            ids = [texts.setdefault(u, len(texts)) for u in reversed(p.context[-h:])]  # newest first
            context.extend(ids + [-1] * (h - len(ids)))
            source.append(sources.setdefault(p.source, len(sources)))
        n = len(reply)
        if n == 0:
            raise ChitchatError("no (context, reply) pair to index")
        ctx = np.frombuffer(context, np.int32).reshape(n, h)
        in_context = np.zeros(len(texts), bool)
        in_context[ctx[ctx >= 0]] = True
        vocab: dict[str, int] = {}
        counts = count_matrix((features(t, cfg.words, cfg.char_ngrams) if in_context[i] else ()
                               for i, t in enumerate(texts)), vocab, grow=True)
        last = counts[ctx[:, 0]]
        rows, cols = np.repeat(np.arange(n), h - 1), ctx[:, 1:].ravel()
        earlier = sp.csr_matrix((np.ones(int((cols >= 0).sum()), np.float32), (rows[cols >= 0], cols[cols >= 0])),
                                shape=(n, len(texts))) @ counts  # the bag of each pair's earlier turns
        # which terms stay: seen often enough, and not so common that they cost more than they say
        df_last = np.bincount(last.indices, minlength=len(vocab))
        df_earlier = np.bincount(earlier.indices, minlength=len(vocab))
        kept = df_last + df_earlier >= cfg.min_df
        most = max(cfg.max_df * n, MIN_DROPPED_DF)
        keep_last, keep_earlier = kept & (df_last <= most), kept & (df_earlier <= most)
        new_id = np.cumsum(keep_last | keep_earlier) - 1
        terms = [t for t, k in zip(vocab, keep_last | keep_earlier) if k]
        idf = idf_of(df_last[keep_last | keep_earlier], n)
        blocks = []
        for m, keep in ((last, keep_last), (earlier, keep_earlier)):
            m = m.tocsr()
            m.data[~keep[m.indices]] = 0
            m.eliminate_zeros()
            m = sp.csr_matrix((m.data, new_id[m.indices].astype(np.int32), m.indptr), shape=(n, len(terms)))
            blocks.append(tfidf_rows(m, idf))
        post = sp.hstack(blocks, format="csr").tocsc()  # columns = 2 x terms, each a term's pairs in order
        texts_blob, offsets = _lines_blob(list(texts))  # normalised utterances hold no newline
        arrays = {
            "postings_indptr": post.indptr.astype(np.int32 if post.nnz < 2 ** 31 else np.int64),
            "postings_pairs": post.indices.astype(np.int32), "postings_weights": post.data.astype(np.float32),
            "idf": idf, "text_offsets": offsets,
            "reply": np.frombuffer(reply, np.int32), "context": ctx, "source": np.frombuffer(source, np.int32),
        }
        meta = {
            "kind": KIND, "format_version": FORMAT_VERSION, "config": asdict(cfg), "tokenizer": tokenizer,
            "jieba": jieba.__version__, "sources": list(sources),
            "counts": {"pairs": n, "texts": len(texts), "terms": len(terms), "postings": int(post.nnz)},
        }
        return cls(meta, terms, texts_blob, arrays)

    @classmethod
    def from_corpora(cls, inputs: Sequence[str], cfg: IndexConfig, model: str | Path | None = None,
                     fmt: str | None = None, max_pairs: int | None = None) -> tuple["ResponseIndex", PairStats]:
        """Read the pairs of `inputs` (any corpora the readers accept) and index them. With `model` (a model
        directory, tokenizer.json or vocab.txt), its tokenizer is recorded and replies with characters
        outside its vocabulary are left out; `max_pairs` stops reading after that many pairs."""
        cfg.check()
        started = time.perf_counter()
        tokenizer = chars = None
        if model is not None:
            tokens = model_tokens(model)
            tokenizer = vocab_hash(tokens)
            chars = frozenset(t for t in tokens if len(t) == 1) | ({" "} if SPACE in tokens else set())
        expand_inputs(inputs)  # a missing input fails here, before any work
        stats = PairStats()
        pairs = islice(read_pairs(inputs, cfg, stats, fmt, chars), max_pairs)
        try:
            index = cls.build(pairs, cfg, tokenizer)
        except ChitchatError:
            if stats.pairs:
                raise
            if stats.read.errors:  # why nothing was read
                raise ChitchatError("; ".join(stats.read.errors[:3])) from None
            raise ChitchatError(f"no (context, reply) pair in {', '.join(map(str, inputs))} "
                                f"({stats.text().splitlines()[-1]})") from None
        index.meta.update({"inputs": [str(i) for i in inputs], "build_s": round(time.perf_counter() - started, 2),
                           "left_out": dict(sorted(stats.skipped.items())), "pairs_per_source": dict(stats.per_source),
                           "held_out_dialogues": len(stats.held_out)})
        return index, stats

    # -- files -------------------------------------------------------------------------------------

    def save(self, out: str | Path) -> None:
        """Write the index into directory `out`, replacing an index there whole (a reader sees the old one
        or the new one)."""
        out = Path(out)
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / META).is_file())):
            raise ChitchatError(f"{out} exists and is not a response index: refusing to overwrite it")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            tmp.chmod(0o755)
            (tmp / TERMS).write_text("".join(t + "\n" for t in self.terms), encoding="utf-8")
            (tmp / TEXTS).write_bytes(self.texts.tobytes())
            for name, a in self.arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
            files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
            meta = {**self.meta, "files": files}
            (tmp / META).write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            commit_dataset_dir(tmp, out)
        finally:
            if tmp.exists():
                for f in tmp.iterdir():
                    f.unlink()
                tmp.rmdir()
        self.meta = meta

    @classmethod
    def load(cls, path: str | Path, tokenizer: str | None = None) -> "ResponseIndex":
        """The index in directory `path`, its arrays memory-mapped; with `tokenizer` (a `tokenizer_identity`),
        an index recorded as built for another tokenizer is refused. Every problem is a one-line
        ChitchatError naming the file."""
        d = Path(path)
        meta_path = d / META
        if not d.is_dir():
            raise ChitchatError(f"{d}: no such index directory")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ChitchatError(f"{meta_path}: missing: {d} is not a response index (build one with chitchat index)") from None
        except (OSError, ValueError) as e:
            raise ChitchatError(f"{meta_path}: unreadable ({type(e).__name__}): rebuild the index") from None
        if not isinstance(meta, dict) or meta.get("kind") != KIND:
            raise ChitchatError(f"{meta_path}: not a chitchat response index")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ChitchatError(f"{meta_path}: index format {meta.get('format_version')}, this chitchat reads "
                                f"{FORMAT_VERSION}: rebuild it with chitchat index")
        if tokenizer is not None and meta.get("tokenizer") not in (None, tokenizer):
            raise ChitchatError(f"{meta_path}: built for tokenizer {meta['tokenizer']}, not this model's {tokenizer}: "
                                "rebuild it with chitchat index --model MODEL")
        names = [TERMS, TEXTS] + [f"{a}.npy" for a in ARRAYS]
        for name in names:
            f, size = d / name, (meta.get("files") or {}).get(name)
            if not f.is_file():
                raise ChitchatError(f"{f}: missing: rebuild the index")
            if f.stat().st_size != size:
                raise ChitchatError(f"{f}: {f.stat().st_size} bytes where {size} were written: truncated or "
                                    "replaced; rebuild the index")
        current = meta_path
        try:
            current = d / TERMS
            terms = current.read_text(encoding="utf-8").split("\n")[:-1]
            current = d / TEXTS
            texts = np.asarray(np.memmap(current, np.uint8, mode="r"))
            arrays = {}
            for name in ARRAYS:
                current = d / f"{name}.npy"
                # a plain ndarray over the mapping: slicing an np.memmap costs microseconds each
                arrays[name] = np.asarray(np.load(current, mmap_mode="r", allow_pickle=False))
            current = meta_path
            problem = _misfit(meta, terms, texts, arrays)
            index = None if problem else cls(meta, terms, texts, arrays, d)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise ChitchatError(f"{current}: corrupt ({type(e).__name__}): rebuild the index") from None
        if problem:
            raise ChitchatError(f"{d / problem[0]}: does not fit the rest of the index ({problem[1]}): rebuild it")
        return index

    # -- lookup ------------------------------------------------------------------------------------

    def text(self, i: int) -> str:
        """Utterance number `i` (a reply or a context utterance)."""
        return self.texts[self.text_offsets[i]:self.text_offsets[i + 1] - 1].tobytes().decode("utf-8")

    def _vector(self, utterances: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Term ids and unit-length TF-IDF weights of the bag of `utterances`'s features."""
        cfg = self.config
        ids = [i for u in utterances for i in map(self.vocab.get, features(u, cfg.words, cfg.char_ngrams)) if i is not None]
        if not ids:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        ids, counts = np.unique(np.array(ids, np.int64), return_counts=True)
        w = (1 + np.log(counts)) * self.idf[ids]
        return ids, (w / np.linalg.norm(w)).astype(np.float32)

    def _query_matrix(self, contexts: Sequence[Sequence[str]], history_weight: float | None) -> sp.csr_matrix:
        """One row per context: the unit TF-IDF vector of its last utterance in the first block of columns,
        history_weight times that of its earlier turns in the second."""
        cfg, n_terms = self.config, len(self.terms)
        w = cfg.history_weight if history_weight is None else history_weight
        indptr, indices, data = [0], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
        for context in contexts:
            utts = [u[-cfg.max_context_chars:] for u in map(normalize, context) if u][-cfg.max_history:]
            last_ids, last_w = self._vector(utts[-1:])
            earlier_ids, earlier_w = self._vector(utts[:-1] if w > 0 else ())
            indices += [last_ids, earlier_ids + n_terms]
            data += [last_w, w * earlier_w]
            indptr.append(indptr[-1] + len(last_ids) + len(earlier_ids))
        index_type = self.postings.indices.dtype  # as the postings': the product then copies neither
        return sp.csr_matrix((np.concatenate(data), np.concatenate(indices).astype(index_type), np.array(indptr, index_type)),
                             shape=(len(contexts), 2 * n_terms))

    def scores_many(self, contexts: Sequence[Sequence[str]], history_weight: float | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each context (utterances oldest first, raw or normalised), (pairs, scores) of every pair that
        shares a term with it: one sparse product of the queries with the postings, which reads only the
        postings of the queries' terms."""
        scores = (self._query_matrix(contexts, history_weight) @ self.postings).tocsr()
        return [(scores.indices[a:b], scores.data[a:b]) for a, b in zip(scores.indptr[:-1], scores.indptr[1:])]

    def query_many(self, contexts: Sequence[Sequence[str]], k: int = 10,
                   history_weight: float | None = None) -> list[list[Hit]]:
        """The `k` best pairs for each context (utterances oldest first), best first, each reply once; equal
        scores in pair order. One product for all the contexts."""
        return [self._hits(pairs, scores, k) for pairs, scores in self.scores_many(contexts, history_weight)]

    def query(self, context: Sequence[str], k: int = 10, history_weight: float | None = None) -> list[Hit]:
        """`query_many` for one context."""
        return self.query_many([context], k, history_weight)[0]

    def _hits(self, pairs: np.ndarray, scores: np.ndarray, k: int) -> list[Hit]:
        if k <= 0:
            return []
        m = min(len(pairs), 4 * k)
        while True:  # a few more than k, then more, until k distinct replies are found
            top = np.argpartition(-scores, m - 1)[:m] if m < len(pairs) else np.arange(len(pairs))
            top = top[np.lexsort((pairs[top], -scores[top]))]
            chosen, seen = [], set()
            for j in top:
                r = int(self.reply[pairs[j]])
                if r not in seen:
                    seen.add(r)
                    chosen.append(j)
                    if len(chosen) == k:
                        break
            if len(chosen) == k or m == len(pairs):
                break
            m = min(len(pairs), 8 * m)
        return [self._hit(int(pairs[j]), float(scores[j])) for j in chosen]

    def _hit(self, pair: int, score: float) -> Hit:
        ctx = tuple(self.text(int(i)) for i in self.context[pair][::-1] if i >= 0)
        return Hit(self.text(int(self.reply[pair])), score, pair, ctx, self.sources[int(self.source[pair])])
