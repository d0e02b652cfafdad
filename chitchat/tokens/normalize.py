"""Text normalisation, used identically at preprocessing and at chat time.

It lives in `tokens/` because it is the first step of turning text into token ids: the tokenizer
saves these rules in every tokenizer.json, and each of its users (preprocess, vocab, the engine,
chat, eval, serve) is at or above `tokens` in the flow. The corpus readers do not use it: they
yield utterances as the files hold them (their skip counts and messages describe the raw
records), and each user normalises what it reads.

Choices (documented in docs/corpora.md):
- full-width ASCII forms (U+FF01..U+FF5E) and the ideographic space become their half-width forms,
  so "，" and "," are one character; CJK punctuation with no half-width twin ("。", "、") stays;
- control and format characters (zero-width spaces, BOMs, C0/C1 controls) are removed;
- runs of whitespace fold to one space, and spaces that only segment the text are removed:
  "你 好 ， 世 界" -> "你好,世界", "看到 曾经 的 初恋" -> "看到曾经的初恋",
  "S E E D" -> "SEED", while "hello world" keeps its space.

The same rules, as `tokenizers` normalisers, are saved in every tokenizer.json
(`chitchat.tokens.tokenizer.project_normalizer`), built from the character sets below, so a tokenizer
loaded without this package encodes raw text as the project does. "Whitespace" is what Python's
`str.isspace` says (U+001C..U+001F included), "control" is the Unicode categories above as this
Python's `unicodedata` knows them (Unicode 14 on Python 3.11): characters unassigned there are
removed, so a tokenizer saved under one Python and used under a newer one removes them too.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

_FULL_TO_HALF = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_FULL_TO_HALF[0x3000] = 0x20
_WS = re.compile(r"\s+")
_WIDE = re.compile("[\uff01-\uff5e\u3000]")
# A space can only survive between two latin letters/digits; text without such a gap loses all spaces.
_LATIN_GAP = re.compile(r"[A-Za-z0-9]\s+[A-Za-z0-9]")
_CONTROL_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}


FULL_TO_HALF = {chr(cp): chr(cp - 0xFEE0) for cp in range(0xFF01, 0xFF5F)} | {"\u3000": " "}
LATIN_ALNUM = "A-Za-z0-9"


@cache
def whitespace_chars() -> str:
    """Every character `str.split()` splits at."""
    return "".join(chr(cp) for cp in range(0x110000) if chr(cp).isspace())


@cache
def control_ranges() -> tuple[tuple[int, int], ...]:
    """(first, last) code point ranges of the characters `normalize` removes (surrogates left out:
    they cannot occur in valid Unicode text outside Python)."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x110000):
        ch = chr(cp)
        if 0xD800 <= cp <= 0xDFFF or ch.isspace() or unicodedata.category(ch) not in _CONTROL_CATEGORIES:
            continue
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return tuple(ranges)


def _is_latin_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _drop_controls(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isspace() or unicodedata.category(ch) not in _CONTROL_CATEGORIES else "" for ch in text
    )


def _join_tokens(tokens: list[str]) -> str:
    """Join whitespace-separated tokens, keeping a space only between two latin words."""
    out = [tokens[0]]
    for prev, tok in zip(tokens, tokens[1:]):
        keep = (
            _is_latin_alnum(prev[-1])
            and _is_latin_alnum(tok[0])
            and not (len(prev) == 1 and len(tok) == 1)  # "S E E D": letters spelled out one by one
        )
        if keep:
            out.append(" ")
        out.append(tok)
    return "".join(out)


def normalize(text: str) -> str:
    """Return the canonical form of one utterance (may be empty)."""
    wide = _WIDE.findall(text)
    if wide:  # str.replace per distinct character is much faster than str.translate with a dict
        for ch in set(wide):
            text = text.replace(ch, chr(_FULL_TO_HALF[ord(ch)]))
    text = _drop_controls(text)
    if not _LATIN_GAP.search(text):  # fast path, same result as _join_tokens
        return "".join(text.split())
    tokens = _WS.split(text.strip())
    if len(tokens) == 1:
        return tokens[0]
    return _join_tokens(tokens)
