"""The saved tokenizer normalises raw text as `chitchat.tokens.normalize` does: a user who loads a model
with `AutoTokenizer` alone feeds it the ids it was trained on. Old tokenizers (no normaliser) keep
their ids, and `upgrade_tokenizer` gives them the normaliser without changing any id."""

import json
import random
import shutil
import subprocess
import textwrap
import unicodedata

import numpy as np
import pytest

from chitchat.errors import ChitchatError
from chitchat.tokens.normalize import normalize
from chitchat.tokens.preprocess import encode_utterances
from chitchat.corpus.readers import ReadStats, read_corpus
from chitchat.tokens.tokenizer import (SPACE, build_tokenizer, load_tokenizer, plain_encoder, read_vocab, tokenizer_tokens,
                                upgrade_tokenizer)
from support import PYTHON, VOCAB, shared_corpora

RAW = "你好，今天天气不错！你 好 ， 世 界"  # the issue's example: 3 [UNK] among 19 ids before


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The default vocabulary's tokenizer, saved, and loaded back with AutoTokenizer alone."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tok")
    build_tokenizer(read_vocab(VOCAB)).save_pretrained(str(d))
    return d, AutoTokenizer.from_pretrained(str(d))


def reference_ids(vocab: dict, unk: int, raw: str) -> list[int]:
    """The project's encoding, written out: normalise, then one id per character, ' ' -> '▁'."""
    return [vocab.get(ch, unk) for ch in normalize(raw).replace(" ", SPACE)]


def legacy_tokenizer():
    """A tokenizer as the project saved them before the normaliser: it only mapped ' ' to '▁'."""
    from tokenizers import normalizers

    tok = build_tokenizer(read_vocab(VOCAB))
    tok.backend_tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    return tok


def test_the_issue_example(saved):
    _, auto = saved
    ids = auto(RAW, add_special_tokens=False)["input_ids"]
    assert auto.unk_token_id not in ids
    assert ids == reference_ids(auto.get_vocab(), auto.unk_token_id, RAW)
    assert auto.decode(ids) == normalize(RAW) == "你好,今天天气不错!你好,世界"


@pytest.mark.parametrize("raw", [
    "S E E D", "我 用 S E E D . 2 4 小 时", "hello   world\t again", "i p h o n e 好 用", "a bc", "ab c", "a b",
    "ＡＢＣ１２３！？，：；（）", "Ｈｅｌｌｏ\u3000Ｗｏｒｌｄ", "你\u200b好\u200c呀\u200d!\u2060", "a\x00b\x07c\x1bd\x7fe\x9f",
    "\ufeff你好", "\u00adsoft\u00ad", "", "   ", "\t\r\n \u3000\u00a0", "x\x1fy z", "好的。、「对」", "1 2 3 45",
    "hello\u200b world", "▁ ▁", "[UNK] 你好",
])
def test_normalizer_equals_normalize(saved, raw):
    _, auto = saved
    assert auto.backend_tokenizer.normalizer.normalize_str(raw) == normalize(raw).replace(" ", SPACE)


def test_normalizer_equals_normalize_on_random_text(saved):
    _, auto = saved
    normalizer = auto.backend_tokenizer.normalizer
    pool = list("aZ09xy 你好世界，。、！？ \t\n\r\u3000\u00a0\u2028\u200b\ufeff\x00\x1f\x85\x9f\x1c"
                "\uff21\uff41\uff10\uff0c\uff01\ufe0f\U0001F600\ue000\u00ad\U000E0001\u0378.,!▁")
    rng = random.Random(7)
    for _ in range(20_000):
        raw = "".join(rng.choice(pool) for _ in range(rng.randint(0, 16)))
        assert normalizer.normalize_str(raw) == normalize(raw).replace(" ", SPACE), repr(raw)


def test_every_control_and_whitespace_character_agrees(saved):
    """One string per block of 4,096 code points: every character normalize treats specially
    (and every other one) goes through both."""
    _, auto = saved
    normalizer = auto.backend_tokenizer.normalizer
    for start in range(0, 0x110000, 4096):
        raw = "".join(chr(cp) for cp in range(start, start + 4096) if not 0xD800 <= cp <= 0xDFFF)
        assert normalizer.normalize_str(raw) == normalize(raw).replace(" ", SPACE), hex(start)


def _id_table(vocab: dict, unk: int) -> np.ndarray:
    """Code point -> id of that character (one character, one token), [UNK] where absent."""
    table = np.full(0x110000, unk, dtype=np.int64)
    for token, i in vocab.items():
        if len(token) == 1:
            table[ord(token)] = i
    table[ord(" ")] = vocab[SPACE]
    return table


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def test_autotokenizer_ids_equal_the_projects_on_every_shared_utterance(saved):
    """Every distinct utterance of every corpus in ../shared/corpora (the open files included), raw,
    through AutoTokenizer's fast tokenizer: the ids are the project's (normalise, then one id per
    character). For speed, utterances are encoded 500 to a string joined by "[SEP]", which the
    tokenizer splits out before normalising, so each utterance is normalised on its own (checked
    below on a sample against one call per utterance); the expected ids are looked up in numpy."""
    root = shared_corpora()
    _, auto = saved
    vocab, unk, sep = auto.get_vocab(), auto.unk_token_id, auto.sep_token_id
    stats = ReadStats()
    texts = sorted({u for d in read_corpus([str(root)], stats) for u in d.utterances})
    assert not stats.errors and stats.files >= 14 and len(texts) > 250_000
    assert not any("[SEP]" in t for t in texts)
    table = _id_table(vocab, unk)
    sep_char = "\x00"  # normalize removes it, so it cannot occur in normalised text
    table[0] = sep
    group = 500
    chunks = [texts[i:i + group] for i in range(0, len(texts), group)]
    for start in range(0, len(chunks), 64):
        batch = chunks[start:start + 64]
        encodings = auto.backend_tokenizer.encode_batch_fast(["[SEP]".join(c) for c in batch], add_special_tokens=False)
        for chunk, enc in zip(batch, encodings):
            got = np.array(enc.ids, dtype=np.int64)
            want = table[_code_points(sep_char.join(normalize(u) for u in chunk))]
            if not np.array_equal(got, want):
                bad = next(u for u in chunk if auto(u, add_special_tokens=False)["input_ids"] != table[_code_points(normalize(u))].tolist())
                pytest.fail(f"AutoTokenizer encodes {bad!r} differently from the project")
    # joining changes nothing: a sample, one call per utterance, through AutoTokenizer's __call__
    sample = random.Random(0).sample(texts, 3_000)
    one_by_one = auto(sample, add_special_tokens=False)["input_ids"]
    assert one_by_one == [reference_ids(vocab, unk, u) for u in sample]
    # the reference is what preprocessing writes: its encoder on the normalised text
    written = encode_utterances(plain_encoder(auto), [normalize(u) for u in sample], np.dtype(np.uint16))
    assert [w.tolist() for w in written] == one_by_one


def test_old_tokenizers_keep_their_ids_on_normalised_text(saved):
    """The engine normalises before encoding, so a tokenizer saved before the normaliser existed
    and a new one give the same ids: old models chat the same."""
    _, auto = saved
    old = legacy_tokenizer()
    texts = [normalize(t) for t in (RAW, "S E E D", "hello world", "ＡＢＣ", "你 好 a bc", "")]
    assert [old(t, add_special_tokens=False)["input_ids"] for t in texts] == \
        [auto(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_upgrade_tokenizer_adds_the_normaliser_and_keeps_every_id(tmp_path):
    old = legacy_tokenizer()
    old.save_pretrained(str(tmp_path / "model"))
    file = tmp_path / "model" / "tokenizer.json"
    before = json.loads(file.read_text(encoding="utf-8"))
    assert before["normalizer"]["type"] == "Replace"
    assert upgrade_tokenizer(tmp_path / "model") is True
    after = json.loads(file.read_text(encoding="utf-8"))
    assert after["normalizer"]["type"] == "Sequence"
    assert {k: v for k, v in after.items() if k != "normalizer"} == {k: v for k, v in before.items() if k != "normalizer"}
    tok = load_tokenizer(tmp_path / "model")
    assert tokenizer_tokens(tok) == read_vocab(VOCAB)
    assert tok(RAW, add_special_tokens=False)["input_ids"] == reference_ids(tok.get_vocab(), tok.unk_token_id, RAW)
    assert upgrade_tokenizer(tmp_path / "model") is False  # already there: not rewritten
    assert file.read_bytes() == (tmp_path / "model" / "tokenizer.json").read_bytes()
    # a dataset directory keeps its tokenizer in tokenizer/
    shutil.copytree(tmp_path / "model", tmp_path / "ds" / "tokenizer")
    (tmp_path / "ds" / "tokenizer" / "tokenizer.json").write_text(json.dumps(before), encoding="utf-8")
    assert upgrade_tokenizer(tmp_path / "ds") is True
    with pytest.raises(ChitchatError, match="no tokenizer.json"):
        upgrade_tokenizer(tmp_path / "nothing")


def test_pipeline_text_generation_on_a_saved_model_returns_chinese(model_dirs, tmp_path):
    """`transformers.pipeline("text-generation", model=DIR)` on a model saved by save_model (tiny,
    random weights), in a fresh interpreter that cannot import chitchat."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["chitchat"] = None
        from transformers import pipeline, set_seed
        set_seed(0)
        generate = pipeline("text-generation", model={str(model_dirs[0])!r})
        prompt = "[CLS]你 好 ，今天天气不错！[SEP]"
        out = generate(prompt, max_new_tokens=12, min_new_tokens=12, return_full_text=False)
        ids = generate.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        print(json.dumps({{"text": out[0]["generated_text"], "prompt": generate.tokenizer.decode(ids)}}, ensure_ascii=False))
    """)
    r = subprocess.run([PYTHON, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["prompt"] == "[CLS]你好,今天天气不错![SEP]"  # normalised by the tokenizer itself
    text = result["text"]
    cjk = [ch for ch in text if unicodedata.name(ch, "").startswith("CJK UNIFIED IDEOGRAPH")]
    assert len(cjk) >= 6, text  # a random model samples the vocabulary, which is mostly characters
    assert "[UNK]" not in text
