"""Corpus readers: every supported format becomes a stream of `Dialogue`s.

One function per format, each `(path, stats) -> Iterator[Dialogue]`. Readers never raise on bad
content: a record of the wrong shape or a line that is not UTF-8 is a counted skip (with a warning
naming file and line), and a file that cannot be read at all is a one-line error in `stats.errors`.
Utterances come out as the file has them; their users normalise them (`chitchat.tokens.normalize`).
Every reader takes a `Source` (a plain, compressed or zipped file, see `chitchat.corpus.sources`); the
row layouts (response selection, one utterance per row, line-aligned pairs) are in
`chitchat.corpus.layouts`.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import zipfile
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from chitchat.errors import ChitchatError
from chitchat.corpus.layouts import RowColumns, read_pair, read_rows, read_selection, sniff
from chitchat.corpus.sources import (BOM, COMPRESSED, STREAM_ERRORS, Dialogue, Pair, ReadStats, Source, decoded_lines,
                              inner_name, is_pair_second, partner_name)

__all__ = ["Dialogue", "ReadStats", "RowColumns", "Source", "FORMATS", "detect_format", "expand_inputs", "read_corpus",
           "read_files"]

FORMATS = ("text", "json", "jsonl", "yaml", "tsv", "csv", "pipe", "selection", "rows")
_EXTENSIONS = {
    ".txt": "text", ".text": "text", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".yml": "yaml", ".yaml": "yaml", ".tsv": "tsv", ".csv": "csv",
}
# Keys under which JSON/JSONL objects hold a dialogue, and under which a turn holds its text.
_DIALOGUE_KEYS = ("messages", "dialog", "dialogue", "conversation", "conversations", "utterances", "turns", "content")
_TURN_KEYS = ("message", "text", "content", "utterance", "value")
_HEADER = re.compile(r"[A-Za-z_ ]+")
SAMPLE_BYTES = 65536


def _as_utterance(turn) -> str | None:
    if isinstance(turn, str):
        return turn
    if isinstance(turn, (int, float)) and not isinstance(turn, bool):
        return str(turn)
    if isinstance(turn, dict):
        for key in _TURN_KEYS:
            if isinstance(turn.get(key), str):
                return turn[key]
    return None


def _as_dialogue(record) -> list[str] | None:
    """A list of utterances from a JSON/YAML record, or None when it has the wrong shape."""
    if isinstance(record, dict):
        for key in _DIALOGUE_KEYS:
            if isinstance(record.get(key), list):
                record = record[key]
                break
        else:
            lists = [v for v in record.values() if isinstance(v, list)]
            if len(lists) != 1:
                return None
            record = lists[0]
    if not isinstance(record, list):
        return None
    utterances = [_as_utterance(t) for t in record]
    if any(u is None for u in utterances):
        return None
    return utterances


def _emit(record, where: str, stats: ReadStats) -> Iterator[Dialogue]:
    stats.read += 1
    utterances = _as_dialogue(record)
    if utterances is None:
        stats.skip("bad_shape", where, f"expected a list of utterances, got {type(record).__name__}")
        return
    yield Dialogue(utterances, where)


def _decoded_lines(src: Source) -> Iterator[tuple[int, str | None]]:
    """(line number, text) for each line; text is None for a line that is not valid UTF-8."""
    with src.open() as f:
        yield from decoded_lines(f)


def read_text(path: Source, stats: ReadStats) -> Iterator[Dialogue]:
    """GPT2-chitchat style: one utterance per line, a blank line between dialogues."""
    turns: list[str] = []
    start, bad = 0, 0  # bad: the first line of this dialogue that is not UTF-8 (0: none)

    def flush():
        stats.read += 1
        where = f"{path}:{start}"
        if bad:
            stats.skip("invalid_utf8", where, f"line {bad} is not valid UTF-8")
            return None
        return Dialogue(list(turns), where)

    for lineno, line in _decoded_lines(path):
        if line is not None and not line.strip():
            if turns or bad:
                d = flush()
                if d:
                    yield d
            turns, bad = [], 0
            continue
        if not turns and not bad:
            start = lineno
        if line is None:
            bad = bad or lineno
        else:
            turns.append(line)
    if turns or bad:
        d = flush()
        if d:
            yield d


def _delimited(path: Source, stats: ReadStats, sep: str, strip: bool) -> Iterator[Dialogue]:
    """One dialogue per line, turns separated by `sep`; empty cells dropped, the others stripped
    when `strip`. The hot loop of the line layouts, kept to C-level calls."""
    name = str(path)  # once: formatting a Source per line costs more than reading the line
    for lineno, line in _decoded_lines(path):
        if line is None:
            stats.read += 1
            stats.skip("invalid_utf8", f"{name}:{lineno}")
            continue
        if not line or line.isspace():
            continue
        stats.read += 1
        cells = line.split(sep)
        turns = [c for c in map(str.strip, cells) if c] if strip else [c for c in cells if c and not c.isspace()]
        yield Dialogue(turns, f"{name}:{lineno}")


def read_tsv(path: Source, stats: ReadStats) -> Iterator[Dialogue]:
    """One dialogue per line, turns separated by tabs (question-answer pairs or more columns)."""
    return _delimited(path, stats, "\t", strip=False)


def read_pipe(path: Source, stats: ReadStats) -> Iterator[Dialogue]:
    """One dialogue per line, turns separated by '|' (` | ` too: cells are stripped); a comma is text."""
    return _delimited(path, stats, "|", strip=True)


def read_csv(path: Source, stats: ReadStats) -> Iterator[Dialogue]:
    """One dialogue per CSV row (RFC 4180 quoting), turns in columns."""
    def good_lines() -> Iterator[str]:
        for lineno, line in _decoded_lines(path):
            if line is None:
                stats.read += 1
                stats.skip("invalid_utf8", f"{path}:{lineno}")
            else:
                yield line + "\n"  # the line end, so that a quoted field spanning lines keeps it

    reader = csv.reader(good_lines())
    try:
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if reader.line_num == 1 and all(_HEADER.fullmatch(c) for c in row):
                continue  # a header row such as "question,answer"
            stats.read += 1
            yield Dialogue([c for c in row if c.strip()], f"{path}:{reader.line_num}")
    except csv.Error as e:
        stats.error(f"{path}:{reader.line_num}: invalid CSV: {e}")


def read_jsonl(path: Source, stats: ReadStats) -> Iterator[Dialogue]:
    """One dialogue per line: a JSON list of utterances, or an object holding one."""
    name = str(path)
    for lineno, line in _decoded_lines(path):
        where = f"{name}:{lineno}"
        if line is None:
            stats.read += 1
            stats.skip("invalid_utf8", where)
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            stats.read += 1
            stats.skip("invalid_json", where, e.msg)
            continue
        yield from _emit(record, where, stats)


def _json_error(path: Source, f, e: Exception) -> str:
    msg = e.args[0] if len(e.args) == 1 else str(e)
    if isinstance(msg, bytes):  # ijson's C backend: the message, then an excerpt of the input
        msg = msg.decode("utf-8", errors="replace")
    msg = str(msg).strip()
    first = msg.splitlines()[0].strip() if msg else type(e).__name__
    if isinstance(e, UnicodeDecodeError) or "invalid char" in first or "invalid bytes in UTF8" in first:
        return f"{path}: invalid UTF-8 or JSON near byte {f.tell()}: {first}"
    return f"{path}: invalid JSON near byte {f.tell()}: {first}"


def _first_char(f) -> bytes:
    head = f.read(len(BOM))
    if head != BOM:
        f.seek(0)
    start = f.tell()
    while True:
        ch = f.read(1)
        if not ch or not ch.isspace():
            f.seek(start)
            return ch
        start = f.tell()


def read_json(path: Source, stats: ReadStats) -> Iterator[Dialogue]:
    """A JSON list of dialogues (lists of strings, or KdConv's `{"messages": [{"message": ...}]}`),
    or an object mapping split names to such lists (LCCC / CDial-GPT). Streamed with ijson, so a
    multi-GB file does not have to fit in memory."""
    import ijson

    with path.open() as f:
        first = _first_char(f)
        if first == b"[":
            prefixes = [("item", str(path))]
        elif first == b"{":
            keys: list[str] = []
            lists: list[str] = []  # the keys whose value is a list
            try:
                for p, ev, v in ijson.parse(f):
                    if p == "" and ev == "map_key":
                        keys.append(v)
                    elif ev == "start_array" and keys and p == keys[-1]:
                        lists.append(p)
            except STREAM_ERRORS:
                raise
            except Exception as e:  # ijson raises several types for malformed input
                stats.error(_json_error(path, f, e))
                return
            f.seek(0)
            _first_char(f)
            prefixes = [(f"{k}.item", f"{path}#{k}") for k in lists if "." not in k and " " not in k]
            if not prefixes:
                stats.error(f"{path}: JSON object holds no list of dialogues (keys: {', '.join(keys[:5]) or 'none'})")
                return
        elif not first:
            stats.error(f"{path}: empty file")
            return
        else:
            stats.error(f"{path}: not a JSON list or object of dialogues (starts with {first!r})")
            return
        for prefix, label in prefixes:
            start = f.tell()
            try:
                for index, record in enumerate(ijson.items(f, prefix)):
                    yield from _emit(record, f"{label}[{index}]", stats)
            except STREAM_ERRORS:
                raise
            except Exception as e:
                stats.error(_json_error(path, f, e))
                return
            f.seek(start)


def read_yaml(path: Source, stats: ReadStats) -> Iterator[Dialogue]:
    """ChatterBot corpus YAML: `conversations:` holding lists of utterances."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with path.open() as f:
            data = yaml.load(f, Loader=loader)
    except UnicodeDecodeError as e:
        stats.error(f"{path}: invalid UTF-8 at byte {e.start}")
        return
    except yaml.reader.ReaderError as e:  # bytes that are not UTF-8, or characters YAML forbids
        char = f" 0x{e.character:02x}" if isinstance(e.character, int) else ""
        stats.error(f"{path}: invalid UTF-8 or unacceptable character{char} at position {e.position}: {e.reason}")
        return
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = str(getattr(e, "problem", None) or e).strip().splitlines()
        stats.error(f"{path}{line}: invalid YAML: {problem[0] if problem else type(e).__name__}")
        return
    if data is None:
        stats.error(f"{path}: empty file")
        return
    if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
        stats.error(f"{path}: YAML without a 'conversations:' list (not a ChatterBot corpus file)")
        return
    for index, record in enumerate(data["conversations"]):
        yield from _emit(record, f"{path}#conversations[{index}]", stats)


READERS: dict[str, Callable[[Source, ReadStats], Iterator[Dialogue]]] = {
    "text": read_text, "json": read_json, "jsonl": read_jsonl, "yaml": read_yaml,
    "tsv": read_tsv, "csv": read_csv, "pipe": read_pipe, "selection": read_selection, "rows": read_rows,
}


def _detect(src: Source, sample: bytes, columns: RowColumns | None) -> str:
    """The format of a file from its (inner) extension and, where that is ambiguous, its first bytes
    (see `chitchat.corpus.layouts.sniff` for delimited files)."""
    ext = _EXTENSIONS.get(src.suffix)
    if ext in ("jsonl", "yaml"):
        return ext
    text = sample.removeprefix(BOM).decode("utf-8", errors="replace")
    stripped = text.lstrip()
    if ext not in ("text", "csv") and stripped[:1] in ("[", "{"):
        first_line = stripped.split("\n", 1)[0]
        try:
            json.loads(first_line)
            return "jsonl" if "\n" in stripped.strip() else "json"
        except json.JSONDecodeError:
            return "json"
    if ext == "json":
        return "json"
    if ext not in ("text", "csv") and stripped.startswith(("conversations:", "categories:")):
        return "yaml"
    return sniff(text, ext, columns or RowColumns(), truncated=len(sample) >= SAMPLE_BYTES)


def _head(src: Source) -> bytes:
    """The first SAMPLE_BYTES of a file, decompressed: what its format is told from."""
    with src.open() as f:
        return f.read(SAMPLE_BYTES)


def detect_format(path: Path | Source, columns: RowColumns | None = None) -> str:
    """The format `read_corpus` reads a file as, when no --format is given."""
    src = path if isinstance(path, Source) else Source(Path(path))
    return _detect(src, _head(src), columns)


def chatterbot_files(name: str) -> list[Path]:
    """`chatterbot:chinese` -> the Chinese YAML files of the chatterbot-corpus package;
    `chatterbot:chinese.greetings` -> one of them."""
    try:
        import chatterbot_corpus
    except ImportError:
        raise ChitchatError(f"{name}: the chatterbot-corpus package is not installed (pip install chatterbot-corpus)") from None
    root = Path(chatterbot_corpus.__file__).parent / "data"
    spec = name.split(":", 1)[1]
    language, _, topic = spec.partition(".")
    folder = root / language
    if not folder.is_dir():
        langs = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir()))
        raise ChitchatError(f"{name}: no such chatterbot-corpus language (have: {langs})")
    files = [folder / f"{topic}.yml"] if topic else sorted(folder.glob("*.yml"))
    if not files[0].is_file():
        raise ChitchatError(f"{name}: no such chatterbot-corpus file {files[0]}")
    return files


def is_corpus_name(name: str) -> bool:
    """A name a folder search picks up: a corpus extension, compressed or not, a line-aligned
    pair file, or a .zip."""
    inner = Path(inner_name(name)).suffix.lower()
    return inner in _EXTENSIONS or partner_name(name) is not None or is_pair_second(name) or name.lower().endswith(".zip")


def _folder_files(folder: Path) -> list[Path]:
    """Files with a corpus extension under `folder`, recursively, leaving out hidden files and
    folders (.git, the temporary directories of a run in progress) and the datasets that
    `chitchat preprocess` writes (their manifest.json and tokenizer files are not corpora)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        d = Path(dirpath)
        if (d / "manifest.json").is_file() and (d / "tokens.bin").is_file():
            dirnames[:] = []
            continue
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        found.extend(d / n for n in filenames if not n.startswith(".") and is_corpus_name(n))
    return sorted(q for q in found if q.is_file())


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files, folders (searched recursively for known extensions), globs and `chatterbot:LANG`."""
    paths: list[Path] = []
    for item in inputs:
        if item.startswith("chatterbot:"):
            paths.extend(chatterbot_files(item))
            continue
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        if not matches:
            raise ChitchatError(f"{item}: no file matches")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                found = _folder_files(p)
                if not found:
                    raise ChitchatError(f"{p}: folder holds no corpus file ({', '.join(sorted(_EXTENSIONS))}, "
                                        "compressed or not, .zip, line-aligned pairs)")
                paths.extend(found)
            elif p.is_file():
                paths.append(p)
            else:
                raise ChitchatError(f"{p}: no such file or folder")
    return paths


def _sources(paths: list[Path], stats: ReadStats, fmt: str | None) -> Iterator[Source | Pair]:
    """Sources in input order; the two files of a line-aligned pair become one `Pair` where the
    first of them stands. A pair file without its partner is an error, unless --format says how
    to read it alone."""
    present = set(paths)
    paired = {p.with_name(partner_name(p.name)) for p in paths if partner_name(p.name)} & present
    for p in paths:
        partner = partner_name(p.name)
        if partner and p.with_name(partner) in present:
            yield Pair(Source(p), Source(p.with_name(partner)))
        elif p in paired:
            continue  # read with its first file
        elif (partner or is_pair_second(p.name)) and fmt is None:
            stats.files += 1
            other = partner or "its other file"
            stats.error(f"{p}: line-aligned file without {other} among the inputs (or give both with --pair)")
        elif p.suffix.lower() == ".zip":
            yield from _zip_members(p, stats)
        else:
            yield Source(p)


def _zip_members(path: Path, stats: ReadStats) -> Iterator[Source]:
    try:
        with zipfile.ZipFile(path) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as e:
        stats.files += 1
        stats.error(f"{path}: not a readable zip file: {_first_line(e)}")
        return
    members = [n for n in names if not Path(n).name.startswith(".") and Path(inner_name(n)).suffix.lower() in _EXTENSIONS
               and Path(n).suffix.lower() not in COMPRESSED]
    if not members:
        stats.files += 1
        stats.error(f"{path}: zip file holds no corpus file")
    for n in members:
        yield Source(path, n)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_source(src: Source, stats: ReadStats, fmt: str | None, columns: RowColumns | None) -> Iterator[Dialogue]:
    sample = _head(src)
    if not sample:
        stats.error(f"{src}: empty file")
        return
    fmt = fmt or _detect(src, sample, columns)
    reader = partial(read_rows, columns=columns) if fmt == "rows" else READERS[fmt]
    yield from reader(src, stats)


def read_corpus(inputs: Iterable[str], stats: ReadStats, fmt: str | None = None, columns: RowColumns | None = None,
                pairs: Iterable[tuple[str, str]] = ()) -> Iterator[Dialogue]:
    """All dialogues of all inputs (then of the explicit line-aligned `pairs`), in order.
    Unreadable files become errors in `stats`."""
    yield from read_files(expand_inputs(inputs), stats, fmt, columns, expand_pairs(pairs))


def read_files(paths: list[Path], stats: ReadStats, fmt: str | None = None, columns: RowColumns | None = None,
               pairs: Iterable[tuple[Path, Path]] = ()) -> Iterator[Dialogue]:
    """`read_corpus` of inputs expanded already (`expand_inputs`, `expand_pairs`), so that a caller
    that expands them first, to check or measure them, does not expand them twice."""
    if fmt is not None and fmt not in READERS:
        raise ChitchatError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    for item in [*_sources(paths, stats, fmt), *(Pair(Source(a), Source(b)) for a, b in pairs)]:
        stats.files += 2 if isinstance(item, Pair) else 1
        try:
            yield from read_pair(item, stats) if isinstance(item, Pair) else _read_source(item, stats, fmt, columns)
        except STREAM_ERRORS as e:
            stats.error(f"{item}: corrupt or truncated compressed data: {_first_line(e)}")
        except OSError as e:
            stats.error(f"{item}: cannot read: {e.strerror or _first_line(e)}")


def expand_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[Path, Path]]:
    """Explicit line-aligned pairs (`--pair POSTS REPLIES`), checked to exist."""
    out = []
    for a, b in pairs:
        for p in (a, b):
            if not Path(p).is_file():
                raise ChitchatError(f"{p}: no such file (--pair)")
        out.append((Path(a), Path(b)))
    return out
