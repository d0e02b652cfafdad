"""Corpora -> normalised dialogues -> token windows -> a dataset directory, in one stream.

Memory stays flat: dialogues are read, normalised, tokenised (batched, by the fast tokenizer) and
appended to the dataset files a batch at a time. The train/valid split is by dialogue, seeded, and
chosen after the stream (from the count of kept dialogues), so it works for any corpus size.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from chitchat.tokens.dataset import FORMAT_VERSION, DatasetWriter, commit_dataset_dir, new_dataset_dir, token_dtype, write_split
from chitchat.errors import ChitchatError
from chitchat.tokens.normalize import normalize
from chitchat.corpus.readers import FORMATS, Dialogue, ReadStats, RowColumns, expand_inputs, expand_pairs, read_files
from chitchat.options import option
from chitchat.tokens.sequences import build_windows
from chitchat.tokens.tokenizer import (CLS, DEFAULT_VOCAB, SEP, UNK, ensure_normalizer, load_tokenizer, plain_encoder,
                                tokenizer_tokens, vocab_hash)

BATCH_DIALOGUES = 512


@dataclass
class PreprocessConfig:
    inputs: list[str] = option(flag="INPUT", nargs="*", help="corpus files (.gz/.bz2/.xz/.zip too), folders, globs, "
                               "or chatterbot:LANG[.TOPIC] (e.g. chatterbot:chinese)")
    output: Path = option(aliases=("-o",), metavar="DIR",
                          help="dataset directory to write (replaced if it is a dataset)")
    format: str | None = option(None, choices=FORMATS, help="input format for every input "
                                "(none: detected per file from extension and content)")
    max_len: int = option(256, metavar="N", help="tokens per training window, [CLS] and [SEP]s included")
    valid_fraction: float | None = option(0.05, metavar="F", help="share of dialogues for validation")
    valid_count: int | None = option(None, metavar="N", help="number of dialogues for validation "
                                     "(instead of --valid-fraction)")
    seed: int = option(42, metavar="N", help="seed of the train/valid split")
    vocab: str = option(str(DEFAULT_VOCAB), metavar="PATH",
                        help="vocab.txt or a model directory whose tokenizer to use")
    progress: bool | None = option(None, help="progress bar (none: only on a terminal)")
    # on the command line: --pair POSTS REPLIES, --id-column, --text-column, --speaker-column
    pairs: list[tuple[str, str]] = field(default_factory=list)  # explicit line-aligned files
    columns: RowColumns = field(default_factory=RowColumns)  # of the one-utterance-per-row layout


@dataclass
class Summary:
    read: ReadStats
    utterances: int = 0
    empty_utterances: int = 0
    truncated_utterances: int = 0
    tokens: int = 0  # utterance tokens (characters), without [CLS]/[SEP]
    unk: int = 0
    windows: int = 0
    split: dict = field(default_factory=dict)
    window_lengths: dict = field(default_factory=dict)
    seconds: float = 0.0
    bytes_read: int = 0

    @property
    def unk_rate(self) -> float:
        return self.unk / self.tokens if self.tokens else 0.0

    def counts(self) -> dict:
        return {
            "files": self.read.files, "dialogues_read": self.read.read, "dialogues_kept": self.read.kept,
            "skipped": dict(sorted(self.read.skipped.items())), "file_errors": len(self.read.errors),
            "utterances": self.utterances, "empty_utterances_dropped": self.empty_utterances,
            "truncated_utterances": self.truncated_utterances, "utterance_tokens": self.tokens,
            "unk_tokens": self.unk, "unk_rate": round(self.unk_rate, 6), "windows": self.windows,
        }

    def text(self) -> str:
        r = self.read
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(r.skipped.items())) or "none"
        lines = [
            f"files {r.files}  dialogues read {r.read}  kept {r.kept}  skipped {sum(r.skipped.values())} ({skipped})",
            f"utterances {self.utterances}  (empty dropped {self.empty_utterances}, truncated {self.truncated_utterances})",
            f"tokens {self.tokens}  [UNK] {self.unk} ({100 * self.unk_rate:.3f}%)  windows {self.windows}"
            f"  (train {self.split.get('train', 0)}, valid {self.split.get('valid', 0)})",
        ]
        if self.window_lengths:
            w = self.window_lengths
            lines.append(f"window length mean {w['mean']:.1f}  p50 {w['p50']}  p95 {w['p95']}  max {w['max']}")
        if self.seconds:
            lines.append(f"{self.bytes_read / 1e6:.1f} MB in {self.seconds:.1f} s ({self.bytes_read / 1e6 / self.seconds:.2f} MB/s)")
        return "\n".join(lines)


def clean_dialogue(d: Dialogue, max_len: int, summary: Summary) -> list[str] | None:
    """Normalised utterances, empty ones dropped and long ones cut to fit one window; None to skip."""
    limit = max_len - 2  # [CLS] u [SEP]; one character is one token
    out = []
    for u in d.utterances:
        u = normalize(u)
        if not u:
            summary.empty_utterances += 1
            continue
        if len(u) > limit:
            u = u[:limit]
            summary.truncated_utterances += 1
        out.append(u)
    if len(out) < 2:
        summary.read.skip("fewer_than_2_utterances", d.source)
        return None
    return out


def batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(enabled: bool | None):
    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(unit=" dialogues", desc="preprocess", disable=disable, file=sys.stderr)


def dialogue_windows(utt: list[np.ndarray], max_len: int, cls_id: int, sep_id: int) -> tuple[list, list]:
    """Token arrays of a dialogue's windows, forward and reversed (MMI): for each window of
    `build_windows`, what `sequences.window_tokens` gives, but cut from the dialogue laid out once
    each way instead of assembled utterance by utterance."""
    windows = build_windows([len(u) for u in utt], max_len)
    cls = np.array([cls_id], dtype=utt[0].dtype)
    sep = np.array([sep_id], dtype=utt[0].dtype)
    body = np.concatenate([x for u in utt for x in (u, sep)])  # u0 [SEP] u1 [SEP] ...
    rbody = np.concatenate([x for u in reversed(utt) for x in (u, sep)])  # un [SEP] ... u0 [SEP]
    bounds = list(accumulate((len(u) + 1 for u in utt), initial=0))  # where utterance i starts in body
    total = bounds[-1]
    fwd = [np.concatenate((cls, body[bounds[s]:bounds[e + 1]])) for s, e in windows]
    mmi = [np.concatenate((cls, rbody[total - bounds[e + 1]:total - bounds[s]])) for s, e in windows]
    return fwd, mmi


def choose_valid(n: int, fraction: float | None, count: int | None, seed: int) -> np.ndarray:
    """Seeded choice of validation dialogues: at least one when asked for any and n >= 2,
    never all of them (training needs data)."""
    if n < 2 or (count is not None and count <= 0) or (count is None and not fraction):
        return np.zeros(0, np.int64)
    size = min(count, n - 1) if count is not None else min(max(1, round(fraction * n)), n - 1)
    from sklearn.model_selection import train_test_split  # heavy: only once the corpus is read

    _, valid = train_test_split(np.arange(n, dtype=np.int64), test_size=size, random_state=seed, shuffle=True)
    return np.sort(valid)


def encode_utterances(encoder, texts: list[str], dtype: np.dtype) -> list[np.ndarray]:
    """Token ids of each normalised utterance (no special tokens added), in one batch, by a
    `chitchat.tokens.tokenizer.plain_encoder` (or a fast tokenizer, whose own normaliser gives the same ids)."""
    backend = getattr(encoder, "backend_tokenizer", encoder)
    encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
    return [np.array(e.ids, dtype=dtype) for e in encodings]


def preprocess(cfg: PreprocessConfig) -> Summary:
    if cfg.max_len < 4:
        raise ChitchatError(f"--max-len {cfg.max_len} is too small (at least 4)")
    if cfg.valid_fraction is not None and not 0 <= cfg.valid_fraction < 1:
        raise ChitchatError(f"--valid-fraction {cfg.valid_fraction} must be in [0, 1)")
    paths = expand_inputs(cfg.inputs)  # fail early on missing inputs, before any output exists
    pairs = expand_pairs(cfg.pairs)
    sources = paths + [p for pair in pairs for p in pair]
    total_bytes = sum(p.stat().st_size for p in sources)  # compressed files: their size on disk
    summary = Summary(read=ReadStats(), bytes_read=total_bytes)
    out = Path(cfg.output)
    tokenizer = ensure_normalizer(load_tokenizer(cfg.vocab))  # saved with the dataset: it normalises raw text
    encoder = plain_encoder(tokenizer)  # the utterances are normalised already
    tokens = tokenizer_tokens(tokenizer)
    cls_id, sep_id, unk_id = (tokenizer.convert_tokens_to_ids(t) for t in (CLS, SEP, UNK))
    dtype = token_dtype(len(tokens))
    tmp = new_dataset_dir(out)
    started = time.perf_counter()
    try:
        writer = DatasetWriter(tmp, dtype)
        kept = 0
        bar = _progress(cfg.progress)
        dialogues = read_files(paths, summary.read, cfg.format, cfg.columns, pairs)
        for batch in batched(dialogues, BATCH_DIALOGUES):
            cleaned = [c for c in (clean_dialogue(d, cfg.max_len, summary) for d in batch) if c is not None]
            bar.update(len(batch))
            if not cleaned:
                continue
            flat = [u for c in cleaned for u in c]
            ids = encode_utterances(encoder, flat, dtype)
            fwd, mmi, owners = [], [], []
            pos = 0
            for c in cleaned:
                f, r = dialogue_windows(ids[pos:pos + len(c)], cfg.max_len, cls_id, sep_id)
                pos += len(c)
                fwd += f
                mmi += r
                owners += [kept] * len(f)
                kept += 1
            writer.add(fwd, mmi, owners)
            summary.utterances += len(flat)
            if ids:
                every = np.concatenate(ids)
                summary.tokens += len(every)
                summary.unk += int(np.count_nonzero(every == unk_id))
        bar.close()
        writer.close()
        for message in summary.read.errors:
            print(f"error: {message}", file=sys.stderr)
        for message in summary.read.warnings:
            print(f"warning: {message}", file=sys.stderr)
        if summary.read.warning_count > len(summary.read.warnings):
            print(f"warning: ... and {summary.read.warning_count - len(summary.read.warnings)} more skips", file=sys.stderr)
        if kept == 0:
            raise ChitchatError("no usable dialogue was read (a dialogue needs at least 2 non-empty utterances)")
        summary.windows = writer.n_windows
        summary.split = write_split(tmp, choose_valid(kept, cfg.valid_fraction, cfg.valid_count, cfg.seed))
        offsets = np.fromfile(tmp / "offsets.bin", dtype=np.int64)
        lengths = np.diff(offsets)
        summary.window_lengths = {
            "mean": float(lengths.mean()), "p50": int(np.percentile(lengths, 50)),
            "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max()),
        }
        summary.seconds = time.perf_counter() - started
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        manifest = {
            "format_version": FORMAT_VERSION,
            "vocab_hash": vocab_hash(tokens),
            "vocab_size": len(tokens),
            "dtype": dtype.name,
            "max_len": cfg.max_len,
            "sources": [str(p) for p in sources],
            "format": cfg.format or "auto",
            "split": {"seed": cfg.seed, "valid_fraction": cfg.valid_fraction, "valid_count": cfg.valid_count,
                      "dialogues_valid": int(len(np.unique(np.fromfile(tmp / "dialogues.bin", np.int64)[np.load(tmp / "valid.npy")]))),
                      "windows": summary.split},
            "counts": {**summary.counts(), "dialogues": kept, "tokens": writer.n_tokens, "windows": writer.n_windows},
            "window_lengths": summary.window_lengths,
            "special_tokens": {"cls": cls_id, "sep": sep_id, "pad": tokenizer.pad_token_id, "unk": unk_id},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
        commit_dataset_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
