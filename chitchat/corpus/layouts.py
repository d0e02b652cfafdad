"""Readers of the row layouts annotated and retrieval corpora come in, and the sniffing that tells
delimited files apart:

- response selection (Douban, E-commerce, Ubuntu): `label<TAB>utt1<TAB>...<TAB>candidate`, each
  context repeated once per candidate; `1` marks a true response, `0` a wrong one;
- one utterance per row (CPED, MELD): a CSV/TSV whose header names a dialogue-id column and a text
  column, optionally a speaker column;
- line-aligned pairs (Weibo STC, NLPCC): line i of `X.post` and line i of `X.response`.

Each reader follows the promise of `chitchat.corpus.readers`: a record of the wrong shape is a counted
skip, a file that cannot be read at all is a one-line error in `stats.errors`.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass
from itertools import zip_longest
from typing import Iterator

from chitchat.corpus.sources import BOM, Dialogue, Pair, ReadStats, Source, count_lines, decoded_lines

# Header names (matched case-insensitively) of the one-utterance-per-row layout.
ID_COLUMNS = ("dialogue_id", "dialog_id", "conv_id", "conversation_id", "session_id")
TEXT_COLUMNS = ("utterance", "text", "content", "message")
SPEAKER_COLUMNS = ("speaker", "speaker_id", "role", "sender")
ROW_DELIMITERS = ("\t", ",", ";", "|")
TURN_JOINER = "，"  # consecutive rows of one speaker become one turn, as CPED's own dialogues join them
LABELS = ("0", "1")
SAMPLE_LINES = 200


@dataclass
class RowColumns:
    """Names of the columns of the one-utterance-per-row layout; None: the defaults above."""

    id_column: str | None = None
    text_column: str | None = None
    speaker_column: str | None = None


# --- sniffing --------------------------------------------------------------------------------

def _is_selection_line(line: str) -> bool:
    cells = line.split("\t", 2)
    return len(cells) == 3 and cells[0].strip() in LABELS


def header_delimiter(line: str) -> str:
    """The delimiter of a header line: the candidate that splits it into the most cells."""
    return max(ROW_DELIMITERS, key=lambda d: len(next(csv.reader([line], delimiter=d))))


def _find(header: list[str], wanted: str | None, defaults: tuple[str, ...]) -> int | None:
    names = [h.strip().lower() for h in header]
    for name in ((wanted,) if wanted else defaults):
        if name.lower() in names:
            return names.index(name.lower())
    return None


def is_rows_header(line: str, columns: RowColumns) -> bool:
    header = next(csv.reader([line], delimiter=header_delimiter(line)))
    return _find(header, columns.id_column, ID_COLUMNS) is not None


def sniff(sample: str, ext: str | None, columns: RowColumns, truncated: bool) -> str:
    """The format of a delimited or plain-text file from its first lines. In order: response
    selection (a 0/1 first column and at least 3 tab-separated cells on every sampled line), one
    utterance per row (a header naming a dialogue-id column), then the separator found on at least
    80% of the lines: tab, then `|`, then (in a .csv) the comma. A .txt with blank lines is the
    GPT2-chitchat text layout. Commas are only a separator in a .csv with no other candidate, so a
    comma inside a `q | a` answer never splits it."""
    lines = sample.splitlines()
    if truncated and len(lines) > 1:
        lines = lines[:-1]  # the sample may end inside a line
    lines = lines[:SAMPLE_LINES]
    nonblank = [line for line in lines if line.strip()]
    default = ext if ext in ("csv", "tsv") else "text"
    if not nonblank:
        return default
    if all(_is_selection_line(line) for line in nonblank):
        return "selection"
    if ext in ("csv", "tsv", "text") and is_rows_header(nonblank[0], columns):
        return "rows"
    if default == "text" and len(nonblank) < len(lines):  # blank lines separate dialogues
        return "text"
    for sep, fmt in (("\t", "tsv"), ("|", "pipe")):
        if sum(sep in line for line in nonblank) >= 0.8 * len(nonblank):
            return fmt
    return default


# --- response selection ----------------------------------------------------------------------

def read_selection(src: Source, stats: ReadStats) -> Iterator[Dialogue]:
    """One dialogue per distinct context (consecutive lines sharing it): the context, then its
    first true response. Wrong candidates are counted as `negative_responses`, further true ones as
    `alternative_responses` (a dialogue has one next turn), neither is kept. A context without a
    true response is kept alone (it is still a real dialogue)."""
    context: list[str] | None = None
    reply: str | None = None
    start = 0

    def flush() -> Dialogue:
        stats.read += 1
        return Dialogue(context + ([reply] if reply is not None else []), f"{name}:{start}")

    name = str(src)
    with src.open() as f:
        for lineno, line in decoded_lines(f):
            where = f"{name}:{lineno}"
            if line is None:
                stats.read += 1
                stats.skip("invalid_utf8", where)
                continue
            if not line.strip():
                continue
            cells = line.split("\t")
            label = cells[0].strip()
            if label not in LABELS or len(cells) < 3:
                stats.read += 1
                detail = f"label {label[:20]!r} is not 0 or 1" if label not in LABELS else "fewer than 3 tab-separated cells"
                stats.skip("bad_label" if label not in LABELS else "bad_shape", where, detail)
                continue
            if cells[1:-1] != context:
                if context is not None:
                    yield flush()
                context, reply, start = cells[1:-1], None, lineno
            if label == "0":
                stats.read += 1
                stats.skip("negative_responses", where, warn=False)
            elif reply is None:
                reply = cells[-1]
            else:
                stats.read += 1
                stats.skip("alternative_responses", where, warn=False)
    if context is not None:
        yield flush()


# --- one utterance per row -------------------------------------------------------------------

def _join(turn: str, text: str) -> str:
    if not turn or not text:
        return turn or text
    if unicodedata.category(turn[-1]).startswith("P"):  # ends a sentence or clause already
        return turn + text
    return turn + TURN_JOINER + text


def _good_lines(src: Source, f, stats: ReadStats, chunk: int = 1 << 20) -> Iterator[str]:
    """The decoded lines of a CSV/TSV, their line ends kept (a quoted field may span lines), a
    megabyte at a time: a line that is not UTF-8 is a counted skip."""
    lineno = 0
    while lines := f.readlines(chunk):
        if lineno == 0 and lines[0].startswith(BOM):
            lines[0] = lines[0][len(BOM):]
        try:
            yield from io.StringIO(b"".join(lines).decode("utf-8"), newline="")
        except UnicodeDecodeError:  # find the bad lines of this chunk
            for i, raw in enumerate(lines, lineno + 1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    stats.read += 1
                    stats.skip("invalid_utf8", f"{src}:{i}")
        lineno += len(lines)


def read_rows(src: Source, stats: ReadStats, columns: RowColumns | None = None) -> Iterator[Dialogue]:
    """Rows sharing a dialogue id (consecutive, as CPED and MELD are laid out) form a dialogue;
    consecutive rows of one speaker are joined into one turn. A dialogue id that comes back after
    another one starts a new dialogue. A row too short to hold the id and text columns is a
    counted skip (`bad_row`)."""
    columns = columns or RowColumns()
    with src.open() as f:
        lines = _good_lines(src, f, stats)
        first = next(lines, None)
        if first is None:
            stats.error(f"{src}: empty file")
            return
        delimiter = header_delimiter(first.rstrip("\r\n"))
        header = next(csv.reader([first], delimiter=delimiter))
        id_col = _find(header, columns.id_column, ID_COLUMNS)
        text_col = _find(header, columns.text_column, TEXT_COLUMNS)
        speaker_col = _find(header, columns.speaker_column, SPEAKER_COLUMNS)
        seen = ", ".join(h.strip() for h in header)
        for col, what, option, wanted in ((id_col, "dialogue-id", "--id-column", columns.id_column),
                                          (text_col, "text", "--text-column", columns.text_column)):
            if col is None:
                name = f"column {wanted!r}" if wanted else f"{what} column"
                stats.error(f"{src}: header has no {name} (columns: {seen}); name it with {option}")
                return
        if columns.speaker_column and speaker_col is None:
            stats.error(f"{src}: header has no column {columns.speaker_column!r} (columns: {seen})")
            return
        need = max(c for c in (id_col, text_col, speaker_col) if c is not None)
        reader = csv.reader(lines, delimiter=delimiter)
        dialogue_id, turns, speaker, start = None, [], None, 0
        try:
            for row in reader:
                if len(row) <= need:
                    if any(c.strip() for c in row):  # not a blank line
                        stats.read += 1
                        stats.skip("bad_row", f"{src}:{reader.line_num + 1}", f"{len(row)} cells, the header has {len(header)}")
                    continue
                text = row[text_col].strip()
                if not text and not row[id_col].strip():
                    continue  # a row of empty cells
                if row[id_col] != dialogue_id:
                    if dialogue_id is not None:
                        stats.read += 1
                        yield Dialogue(turns, f"{src}:{start}")
                    dialogue_id, turns, speaker, start = row[id_col], [], None, reader.line_num + 1
                if speaker_col is None:
                    turns.append(text)
                    continue
                who = row[speaker_col].strip()
                if turns and who == speaker:
                    turns[-1] = _join(turns[-1], text)
                else:
                    turns.append(text)
                    speaker = who
        except csv.Error as e:
            stats.error(f"{src}:{reader.line_num + 1}: invalid CSV: {e}")
            return
        if dialogue_id is not None:
            stats.read += 1
            yield Dialogue(turns, f"{src}:{start}")


# --- line-aligned pairs ----------------------------------------------------------------------

def read_pair(pair: Pair, stats: ReadStats) -> Iterator[Dialogue]:
    """Line i of each file is one exchange. Files of different line counts are an error (checked
    before anything is read: a misaligned pair would teach wrong replies)."""
    a, b = pair.first, pair.second
    na, nb = count_lines(a), count_lines(b)
    if na == nb == 0:
        stats.error(f"{pair}: empty files")
        return
    if na != nb:
        stats.error(f"{a} has {na} lines but {b} has {nb}: line-aligned files need one line per exchange")
        return
    name = str(a)
    with a.open() as fa, b.open() as fb:
        for (lineno, post), (_, reply) in zip_longest(decoded_lines(fa), decoded_lines(fb), fillvalue=(0, None)):
            stats.read += 1
            if post is None or reply is None:
                bad = a if post is None else b
                stats.skip("invalid_utf8", f"{a}:{lineno}", f"line {lineno} of {bad} is not valid UTF-8")
                continue
            yield Dialogue([post, reply], f"{name}:{lineno}")
