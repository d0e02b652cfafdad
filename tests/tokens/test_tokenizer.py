"""The character vocabulary and the tokenizer saved with every dataset and model."""

import subprocess
import textwrap
from pathlib import Path

import pytest

from chitchat.cli import main
from chitchat.errors import ChitchatError
from chitchat.tokens.normalize import normalize
import chitchat.tokens.tokenizer as tokenizer_module
from chitchat.tokens.tokenizer import (DEFAULT_VOCAB, MAX_VOCAB, SPACE, SPECIAL_TOKENS, build_tokenizer, check_tokenizer, load_tokenizer,
                                read_vocab, tokenizer_tokens)
from support import PYTHON, VOCAB

TEXT = "你好hello world,世界"  # normalised: the tokenizer leaves it as it is


def test_vocab_file():
    lines = VOCAB.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and "" not in lines[:-1]  # one entry a line, final newline, no blanks
    entries = lines[:-1]
    assert len(entries) <= MAX_VOCAB == 10_000
    assert entries[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] and entries[4] == SPACE
    assert len(set(entries)) == len(entries)
    assert all(len(e) == 1 for e in entries[5:])  # characters
    assert all(normalize(e) == e for e in entries[5:])  # only forms that normalised text can hold
    assert read_vocab(VOCAB) == entries
    for ch in "你好世界的了吗呢啊,.!?0123456789abcxyzABC。、":
        assert ch in entries


def test_vocab_command_is_deterministic_and_reproduces_the_committed_vocab(tmp_path, capsys):
    pytest.importorskip("chatterbot_corpus")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    assert main(["vocab", "chatterbot:chinese", "corpus", "-o", str(a)]) == 0
    assert main(["vocab", "chatterbot:chinese", "corpus", "-o", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert "wrote" in capsys.readouterr().out
    assert a.read_bytes() == VOCAB.read_bytes(), (
        "vocab/vocab.txt is no longer what `chitchat vocab chatterbot:chinese corpus` builds; "
        "a changed vocabulary invalidates every dataset and model made with the old one")


def test_the_package_ships_the_default_vocabulary():
    """An installed chitchat reads its copy in the package (package data in pyproject.toml): the same bytes
    as the checkout's vocab/vocab.txt."""
    assert DEFAULT_VOCAB.parent == Path(tokenizer_module.__file__).parent and DEFAULT_VOCAB != VOCAB
    assert DEFAULT_VOCAB.read_bytes() == VOCAB.read_bytes(), (
        "chitchat/tokens/default_vocab.txt differs from vocab/vocab.txt: copy vocab/vocab.txt over it")
    assert f'"chitchat.tokens" = ["{DEFAULT_VOCAB.name}"]' in (VOCAB.parents[1] / "pyproject.toml").read_text(encoding="utf-8")


def test_vocab_size_limit(tmp_path):
    assert main(["vocab", "-o", str(tmp_path / "v.txt"), "--size", "300"]) == 0
    assert len(read_vocab(tmp_path / "v.txt")) == 300
    assert main(["vocab", "-o", str(tmp_path / "w.txt"), "--size", "10001"]) == 2


def test_round_trip(tokenizer):
    assert normalize(TEXT) == TEXT
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(TEXT)  # one character, one token
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.convert_ids_to_tokens(ids)[TEXT.index(" ")] == SPACE
    assert tokenizer.decode(ids) == TEXT


def test_saved_tokenizer_loads_with_autotokenizer_alone(tmp_path, tokenizer):
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    # a fresh interpreter in which chitchat cannot be imported: transformers alone must do
    code = textwrap.dedent(f"""
        import sys
        sys.modules["chitchat"] = None  # any `import chitchat...` now raises ImportError
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(tmp_path / "tok")!r})
        ids = tok({TEXT!r}, add_special_tokens=False)["input_ids"]
        print(len(tok), tok.unk_token_id in ids, tok.decode(ids) == {TEXT!r}, tok.cls_token, tok.sep_token, tok.pad_token)
    """)
    r = subprocess.run([PYTHON, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(len(read_vocab(VOCAB))), "False", "True", "[CLS]", "[SEP]", "[PAD]"]
    # and through the package's loader, which checks it
    tok = load_tokenizer(tmp_path / "tok")
    assert tokenizer_tokens(tok) == read_vocab(VOCAB)
    assert tok.decode(tok(TEXT, add_special_tokens=False)["input_ids"]) == TEXT


def test_check_tokenizer_rejects_bert_tokenizer_that_lost_its_vocabulary():
    """transformers 5's BertTokenizer(vocab_file=...) builds an empty WordPiece and maps everything
    to [UNK] (size 5): the check must catch that. Should a version load the file properly, the
    check must accept it, and it must then really hold the vocabulary."""
    from transformers import BertTokenizer

    bert = BertTokenizer(vocab_file=str(VOCAB))
    ids = bert("你好", add_special_tokens=False)["input_ids"]
    if len(bert) <= len(SPECIAL_TOKENS) + 1:
        assert ids == [bert.unk_token_id] * len(ids)  # the failure this guards against
        with pytest.raises(ChitchatError, match="vocabulary was not loaded"):
            check_tokenizer(bert, str(VOCAB))
    else:
        check_tokenizer(bert, str(VOCAB))
        assert len(bert) == len(read_vocab(VOCAB))
        assert bert.unk_token_id not in ids


def test_check_tokenizer_on_built_tokenizers(tokenizer):
    check_tokenizer(tokenizer, "vocab.txt")  # the real one passes
    with pytest.raises(ChitchatError, match="vocabulary was not loaded"):
        check_tokenizer(build_tokenizer(list(SPECIAL_TOKENS)), "specials only")


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ChitchatError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "v.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ChitchatError, match="lacks the special tokens"):
        load_tokenizer(tmp_path / "v.txt")
    (tmp_path / "d.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\na\na\n", encoding="utf-8")
    with pytest.raises(ChitchatError, match="duplicate"):
        load_tokenizer(tmp_path / "d.txt")
