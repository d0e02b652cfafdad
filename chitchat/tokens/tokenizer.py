"""The character vocabulary and the Hugging Face fast tokenizer built on it.

A vocabulary is a text file, one token per line: the special tokens first, then "▁" (the space),
then characters. The tokenizer is a `tokenizers` WordLevel model over single characters, wrapped
in a `transformers` fast tokenizer and saved next to every model and dataset, so that
`AutoTokenizer.from_pretrained(dir)` works without this package. Its normaliser is
`chitchat.tokens.normalize.normalize` written as `tokenizers` normalisers (`project_normalizer`), so raw
text gets the ids the model was trained on; `upgrade_tokenizer` gives an older saved tokenizer
(which only mapped " " to "▁") that normaliser, without changing any id.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Iterable

from chitchat.errors import ChitchatError
from chitchat.files import atomic_path
from chitchat.tokens.normalize import FULL_TO_HALF, LATIN_ALNUM, control_ranges, normalize, whitespace_chars

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP)
SPACE = "▁"
MAX_VOCAB = 10_000
DEFAULT_SIZE = 8_000  # covers 99.97% of the characters of LCCC toy + KdConv dev without them
# The default vocabulary, shipped in the package (package data) so that an installed chitchat
# preprocesses with it: a copy of the checkout's vocab/vocab.txt, which tests/tokens/test_tokenizer.py
# keeps identical.
DEFAULT_VOCAB = Path(__file__).with_name("default_vocab.txt")

# Printable ASCII and common punctuation are always in the vocabulary, whatever their frequency.
_ALWAYS = [chr(c) for c in range(0x21, 0x7F)] + list("。、“”‘’《》【】「」『』〈〉…—·￥")


def read_vocab(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        tokens = path.read_text(encoding="utf-8").split("\n")
    except OSError as e:
        raise ChitchatError(f"cannot read vocabulary {path}: {e.strerror}") from None
    tokens = [t for t in tokens if t != ""]
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise ChitchatError(f"vocabulary {path} lacks the special tokens {' '.join(missing)}")
    if len(set(tokens)) != len(tokens):
        raise ChitchatError(f"vocabulary {path} has duplicate entries")
    return tokens


def vocab_hash(tokens: list[str]) -> str:
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()[:16]


def jieba_char_frequencies() -> Counter:
    """Character frequencies from jieba's word dictionary: a word's count goes to each character."""
    import jieba

    dict_path = Path(jieba.__file__).parent / "dict.txt"
    freq: Counter = Counter()
    with open(dict_path, encoding="utf-8") as f:
        for line in f:
            parts = line.split(" ")
            if len(parts) < 2:
                continue
            word, count = parts[0], int(parts[1])
            for ch in word:
                freq[ch] += count
    return freq


def build_vocab(corpus_chars: Counter | None = None, size: int = MAX_VOCAB, min_corpus_count: int = 1) -> list[str]:
    """Deterministic vocabulary: specials, space, ASCII, then every corpus character seen at least
    `min_corpus_count` times, then the most frequent characters of jieba's dictionary until `size`."""
    if size > MAX_VOCAB:
        raise ChitchatError(f"vocabulary size {size} exceeds the maximum of {MAX_VOCAB}")
    tokens = list(SPECIAL_TOKENS) + [SPACE]
    seen = set(tokens)

    def add(chars: Iterable[str]) -> None:
        for ch in chars:
            if len(tokens) >= size:
                return
            if ch not in seen and not ch.isspace() and normalize(ch) == ch:
                seen.add(ch)
                tokens.append(ch)

    add(_ALWAYS)
    if corpus_chars:
        add(ch for ch, n in sorted(corpus_chars.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_corpus_count)
    general = jieba_char_frequencies()
    add(ch for ch, _ in sorted(general.items(), key=lambda kv: (-kv[1], kv[0])))
    return tokens


def write_vocab(tokens: list[str], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")


def _char_class(chars: Iterable[str] = (), ranges: Iterable[tuple[int, int]] = (), negate: bool = False) -> str:
    parts = [f"\\x{{{ord(c):X}}}" for c in chars]
    parts += [f"\\x{{{a:X}}}" + (f"-\\x{{{b:X}}}" if b > a else "") for a, b in ranges]
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def project_normalizer():
    """`chitchat.tokens.normalize.normalize`, then " " -> "▁", as a `tokenizers` normaliser sequence:
    full-width forms to half-width (one Replace per character: NFKC would also rewrite "…" and
    other characters the vocabulary holds), control characters removed, then each run of
    whitespace becomes "▁" where a space survives (between two latin letters/digits, unless both
    neighbouring words are one character long) and disappears everywhere else. Idempotent, so text
    the project has already normalised encodes exactly as before."""
    from tokenizers import Regex, normalizers

    ws = whitespace_chars()
    w, not_w = _char_class(ws), _char_class(ws, negate=True)
    latin = f"[{LATIN_ALNUM}]"
    # a gap between latin P and T keeps a space when P's word or T's word is longer than one character
    kept = f"(?<={not_w}{latin}){w}+(?={latin})|(?<={latin}){w}+(?={latin}{not_w})"
    steps = [normalizers.Replace(wide, half) for wide, half in FULL_TO_HALF.items()]
    steps += [
        normalizers.Replace(Regex(_char_class(ranges=control_ranges())), ""),
        normalizers.Replace(Regex(kept), SPACE),
        normalizers.Replace(Regex(w + "+"), ""),
    ]
    return normalizers.Sequence(steps)


def plain_encoder(tokenizer):
    """A copy of a fast tokenizer's backend for text `normalize` has already made canonical: it
    only maps " " to "▁" (what project_normalizer does to such text, a step instead of a hundred)."""
    from tokenizers import Tokenizer, normalizers

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.normalizer = normalizers.Replace(" ", SPACE)
    return backend


def text_encoder(tokenizer):
    """The backend that encodes text `normalize` has made canonical: `plain_encoder`'s when the
    tokenizer normalises as the project does (the same ids, a step instead of a hundred), else its
    own backend (a tokenizer from elsewhere keeps its own normaliser)."""
    backend = tokenizer.backend_tokenizer
    if json.loads(backend.to_str()).get("normalizer") == _project_normalizer_state():
        return plain_encoder(tokenizer)
    return backend


@functools.cache
def _project_normalizer_state() -> dict:
    from tokenizers import Tokenizer, models

    probe = Tokenizer(models.WordLevel({UNK: 0}, unk_token=UNK))
    probe.normalizer = project_normalizer()
    return json.loads(probe.to_str())["normalizer"]


def ensure_normalizer(tokenizer):
    """Give a fast tokenizer (in place) the project's normaliser; returns it. Ids do not change."""
    tokenizer.backend_tokenizer.normalizer = project_normalizer()
    return tokenizer


def upgrade_tokenizer(path: str | Path) -> bool:
    """Rewrite a saved tokenizer.json (a model directory, a dataset directory, or the file) so that
    it carries the project's normaliser, as tokenizers saved before it was added do not: raw text
    then gets the ids the model was trained on, without this package. The vocabulary, the added
    tokens and every id stay as they are (checked). Returns False when it already had it."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = next((f for f in (path, path / "tokenizer.json", path / "tokenizer" / "tokenizer.json") if f.is_file()), None)
    if file is None:
        raise ChitchatError(f"no tokenizer.json in {path}")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a plain Exception for malformed files
        raise ChitchatError(f"{file}: cannot load tokenizer: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    before = tok.get_vocab(with_added_tokens=True)
    normalizer = project_normalizer()
    old = json.loads(tok.to_str()).get("normalizer")
    tok.normalizer = normalizer
    if json.loads(tok.to_str())["normalizer"] == old:
        return False
    if tok.get_vocab(with_added_tokens=True) != before:
        raise ChitchatError(f"{file}: the vocabulary changed while upgrading (not written)")
    with atomic_path(file) as tmp:
        tok.save(str(tmp))
    return True


def build_tokenizer(tokens: list[str]):
    """A `transformers` fast tokenizer over a character vocabulary, normalising as the project does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK))
    tok.normalizer = project_normalizer()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.Fuse()])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, pad_token=PAD, cls_token=CLS, sep_token=SEP
    )
    hf.model_input_names = ["input_ids", "attention_mask"]
    return hf


def tokenizer_tokens(tokenizer) -> list[str]:
    """The vocabulary of a tokenizer in id order."""
    vocab = tokenizer.get_vocab()
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def load_tokenizer(path: str | Path):
    """Load a tokenizer from a model/dataset directory (tokenizer.json) or from a vocab.txt file."""
    path = Path(path)
    if path.is_file():
        return build_tokenizer(read_vocab(path))
    if not (path / "tokenizer.json").is_file():
        raise ChitchatError(f"no tokenizer in {path} (expected tokenizer.json or a vocab.txt file)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    check_tokenizer(tok, str(path))
    return tok


def check_tokenizer(tokenizer, where: str) -> None:
    """Guard against tokenizers that silently lost their vocabulary (for example transformers 5's
    `BertTokenizer(vocab_file=...)`, which maps everything to [UNK] with a vocabulary of 5)."""
    if len(tokenizer) <= len(SPECIAL_TOKENS) + 1:
        raise ChitchatError(f"tokenizer from {where} has only {len(tokenizer)} entries: its vocabulary was not loaded")
    for t in SPECIAL_TOKENS:
        if tokenizer.convert_tokens_to_ids(t) is None:
            raise ChitchatError(f"tokenizer from {where} lacks {t}")
