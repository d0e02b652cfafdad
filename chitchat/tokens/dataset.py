"""On-disk storage of a preprocessed dataset: a directory of flat, memory-mappable arrays.

    manifest.json        format version, vocabulary hash, sources, max_len, split, counts, stats
    tokenizer/           the tokenizer the ids belong to (AutoTokenizer-loadable)
    tokens.bin           all windows' token ids, dialogue order, concatenated (dtype in manifest)
    tokens_mmi.bin       the same windows with their utterances reversed (for the MMI model)
    offsets.bin          int64, n_windows + 1: window i is tokens[offsets[i]:offsets[i+1]]
    dialogues.bin        int64, n_windows: the dialogue each window comes from
    train.npy, valid.npy int64 window indices of each split (split by dialogue)

No pickle anywhere: `np.save`/`np.load(allow_pickle=False)` and raw little-endian arrays.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chitchat.errors import ChitchatError
from chitchat.tokens.tokenizer import load_tokenizer

FORMAT_VERSION = 1
SPLITS = ("train", "valid")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class DatasetWriter:
    """Appends windows to the flat files of a dataset being written in a temporary directory."""

    def __init__(self, tmp_dir: Path, dtype: np.dtype):
        self.dir = tmp_dir
        self.dtype = dtype
        self._tokens = open(tmp_dir / "tokens.bin", "wb")
        self._mmi = open(tmp_dir / "tokens_mmi.bin", "wb")
        self._offsets = open(tmp_dir / "offsets.bin", "wb")
        self._dialogues = open(tmp_dir / "dialogues.bin", "wb")
        self.n_tokens = 0
        self.n_windows = 0
        np.zeros(1, np.int64).tofile(self._offsets)

    def add(self, fwd: list[np.ndarray], mmi: list[np.ndarray], dialogue_ids: list[int]) -> None:
        """A batch of windows: forward and reversed token arrays, and their dialogue indices."""
        if not fwd:
            return
        lengths = np.fromiter((len(w) for w in fwd), np.int64, len(fwd))
        np.concatenate(fwd).astype(self.dtype, copy=False).tofile(self._tokens)
        np.concatenate(mmi).astype(self.dtype, copy=False).tofile(self._mmi)
        (self.n_tokens + np.cumsum(lengths)).tofile(self._offsets)
        np.asarray(dialogue_ids, np.int64).tofile(self._dialogues)
        self.n_tokens += int(lengths.sum())
        self.n_windows += len(fwd)

    def close(self) -> None:
        for f in (self._tokens, self._mmi, self._offsets, self._dialogues):
            f.close()


def write_split(tmp_dir: Path, valid_dialogues: np.ndarray) -> dict[str, int]:
    """Write train.npy / valid.npy: window indices whose dialogue is (not) in `valid_dialogues`."""
    dialogues = np.fromfile(tmp_dir / "dialogues.bin", dtype=np.int64)
    is_valid = np.isin(dialogues, valid_dialogues)
    windows = np.arange(len(dialogues), dtype=np.int64)
    np.save(tmp_dir / "valid.npy", windows[is_valid])
    np.save(tmp_dir / "train.npy", windows[~is_valid])
    return {"train": int((~is_valid).sum()), "valid": int(is_valid.sum())}


def new_dataset_dir(output: Path) -> Path:
    """A temporary directory beside `output`, renamed into place by `commit_dataset_dir`."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ChitchatError(f"{output} exists and is not a directory: refusing to overwrite it")
    if output.exists() and not (output / "manifest.json").is_file() and any(output.iterdir()):
        raise ChitchatError(f"{output} exists and is not a chitchat dataset: refusing to overwrite it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    tmp.chmod(0o755)
    return tmp


def commit_dataset_dir(tmp: Path, output: Path) -> None:
    """Make the fully written directory `tmp` the dataset `output`. A directory cannot be renamed over
    a non-empty one (what chitchat.files.atomic_path does for files), so an old dataset is first
    moved aside, then removed once the new one is in place."""
    output = Path(output)
    if output.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        output.rename(trash / "old")
        tmp.rename(output)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(output)


@dataclass
class TokenDataset:
    """Read side: memory-mapped windows of one split, forward or reversed (MMI)."""

    dir: Path
    manifest: dict
    tokens: np.ndarray
    offsets: np.ndarray
    index: np.ndarray  # window ids in this split

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        w = self.index[i]
        return self.tokens[self.offsets[w]:self.offsets[w + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return (self.offsets[self.index + 1] - self.offsets[self.index]).astype(np.int64)

    @property
    def vocab_hash(self) -> str:
        return self.manifest["vocab_hash"]

    def tokenizer(self):
        return load_tokenizer(self.dir / "tokenizer")


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise ChitchatError(f"{path}: not a preprocessed dataset (no manifest.json); run `chitchat preprocess` first")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ChitchatError(f"{mf}: corrupt manifest: {e}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ChitchatError(f"{path}: dataset format {manifest.get('format_version')} is not {FORMAT_VERSION}; preprocess again")
    return manifest


def load_dataset(path: str | Path, split: str = "train", mmi: bool = False) -> TokenDataset:
    if split not in SPLITS:
        raise ChitchatError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    path = Path(path)
    manifest = read_manifest(path)
    dtype = np.dtype(manifest["dtype"])
    try:
        tokens = np.memmap(path / ("tokens_mmi.bin" if mmi else "tokens.bin"), dtype=dtype, mode="r") \
            if manifest["counts"]["tokens"] else np.zeros(0, dtype)
        offsets = np.fromfile(path / "offsets.bin", dtype=np.int64)
        index = np.load(path / f"{split}.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ChitchatError(f"{path}: dataset files missing or corrupt ({e}); preprocess again") from None
    if len(tokens) != manifest["counts"]["tokens"] or len(offsets) != manifest["counts"]["windows"] + 1:
        raise ChitchatError(f"{path}: dataset files do not match manifest.json (truncated copy?); preprocess again")
    return TokenDataset(path, manifest, tokens, offsets, index)
