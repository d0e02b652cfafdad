"""What readers read from and report to: a `Source` (a file, a compressed file read as a stream, or
a member of a .zip), a `Pair` of line-aligned files, the `Dialogue`s they yield and the
`ReadStats` they count into.

Compressed files are opened with the standard library's streams (gzip, bz2, lzma, zipfile), so
nothing is unpacked to disk or held in memory; the format is detected from the inner name
(`train.jsonl.gz` is JSON lines).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# Errors a damaged compressed stream raises while it is read (gzip.BadGzipFile is an OSError).
STREAM_ERRORS = (EOFError, lzma.LZMAError, zlib.error, zipfile.BadZipFile, gzip.BadGzipFile)
# Line-aligned pairs: X.post + X.response (Weibo STC, NLPCC), X.src + X.tgt, X.source + X.target.
PAIR_SUFFIXES = {".post": ".response", ".src": ".tgt", ".source": ".target"}
BOM = b"\xef\xbb\xbf"
MAX_WARNINGS = 20


@dataclass
class Dialogue:
    utterances: list[str]
    source: str  # "path:line" or "path#index", for messages


@dataclass
class ReadStats:
    """What the readers saw: dialogue records read, skipped by reason, and file-level errors."""

    files: int = 0
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    warning_count: int = 0

    @property
    def kept(self) -> int:
        return self.read - sum(self.skipped.values())

    def skip(self, reason: str, where: str, detail: str = "", warn: bool = True) -> None:
        """Count a skipped record; `warn=False` for the expected ones (a negative candidate
        response is a skip by design, not a problem to report line by line)."""
        self.skipped[reason] += 1
        if not warn:
            return
        self.warning_count += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(f"{where}: skipped ({reason}){': ' + detail if detail else ''}")

    def error(self, message: str) -> None:
        self.errors.append(message)


@dataclass(frozen=True)
class Source:
    """One corpus file: on disk, compressed (.gz/.bz2/.xz), or `member` of the .zip at `path`."""

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.member is None else f"{self.path}/{self.member}"

    @property
    def name(self) -> str:
        """The name the format is detected from: the file name without a compression suffix."""
        return inner_name(self.member if self.member is not None else self.path.name)

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix.lower()

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """The decompressed bytes, as a binary stream (seekable, as the JSON reader needs)."""
        if self.member is not None:
            with zipfile.ZipFile(self.path) as z, z.open(self.member) as f:
                yield f
        elif self.path.suffix.lower() in COMPRESSED:
            # a megabyte buffer: the decompressors' own 8 KiB one costs a Python call per 8 KiB
            with COMPRESSED[self.path.suffix.lower()](self.path, "rb") as raw, io.BufferedReader(raw, 1 << 20) as f:
                yield f
        else:
            with open(self.path, "rb") as f:
                yield f


@dataclass(frozen=True)
class Pair:
    """Two line-aligned files: line i of `first` and line i of `second` are one exchange."""

    first: Source
    second: Source

    def __str__(self) -> str:
        return f"{self.first} + {self.second}"


def inner_name(name: str) -> str:
    """`train.jsonl.gz` -> `train.jsonl`; other names unchanged."""
    suffix = Path(name).suffix.lower()
    return name[: -len(suffix)] if suffix in COMPRESSED else name


def partner_name(name: str) -> str | None:
    """The name of the other file of a line-aligned pair (`x.post` -> `x.response`), or None."""
    inner = inner_name(name)
    stem, suffix = Path(inner).stem, Path(inner).suffix.lower()
    if suffix not in PAIR_SUFFIXES:
        return None
    return stem + PAIR_SUFFIXES[suffix] + name[len(inner):]


def is_pair_second(name: str) -> bool:
    return Path(inner_name(name)).suffix.lower() in PAIR_SUFFIXES.values()


def decoded_lines(f: BinaryIO, chunk: int = 1 << 20) -> Iterator[tuple[int, str | None]]:
    """(line number, text) for each line of a binary stream; text is None for a line that is not
    valid UTF-8. A BOM on the first line and the line end (LF or CRLF) are removed. Lines are
    decoded a megabyte at a time (one line at a time only in a chunk holding a bad one)."""
    lineno = 0
    while lines := f.readlines(chunk):
        if lineno == 0 and lines[0].startswith(BOM):
            lines[0] = lines[0][len(BOM):]
        try:
            parts = b"".join(lines).decode("utf-8").split("\n")
        except UnicodeDecodeError:
            for lineno, raw in enumerate(lines, lineno + 1):
                try:
                    yield lineno, raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    yield lineno, None
            continue
        if not lines[-1].endswith(b"\n"):
            parts.append("")  # the last line had no line end: keep the count right
        for lineno, text in enumerate(parts[:-1], lineno + 1):
            yield lineno, text.rstrip("\r")


def count_lines(src: Source, chunk: int = 1 << 20) -> int:
    """Lines in a file, a last line without a line end included, read in chunks (flat memory)."""
    n, last = 0, b"\n"
    with src.open() as f:
        while block := f.read(chunk):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")
