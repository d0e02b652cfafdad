"""Dataset storage: what `preprocess` writes is exactly what `load_dataset` gives back."""

import json

import numpy as np
import pytest

from chitchat.tokens.dataset import FORMAT_VERSION, load_dataset, new_dataset_dir, read_manifest
from chitchat.errors import ChitchatError
from chitchat.tokens.normalize import normalize
from chitchat.tokens.preprocess import PreprocessConfig, preprocess
from chitchat.tokens.tokenizer import CLS, SEP, UNK, read_vocab, vocab_hash
from support import VOCAB, encode, write_jsonl

DIALOGUES = [
    ["你 好 ， 世 界", "你好呀！今天过得怎么样？", "还 不 错 ， 刚 下 班 。"],
    ["我 用 S E E D . 2 4 小 时", "ｉｐｈｏｎｅ　好用吗？", "hello world 😀"],
    ["在吗", "在\u200b的", "   ", "有 事 吗"],  # an empty utterance, dropped and counted
    ["短", "长" * 40, "中等长度的一句话"],
    ["嗯", "嗯嗯"],
]


def run(tmp_path, dialogues=DIALOGUES, name="ds", **kw):
    src = write_jsonl(tmp_path / f"{name}.jsonl", dialogues)
    cfg = PreprocessConfig(inputs=[str(src)], output=tmp_path / name, progress=False, **kw)
    return preprocess(cfg), tmp_path / name


def split_at_sep(window, sep_id):
    assert window[-1] == sep_id
    parts, cur = [], []
    for t in window[1:]:
        if t == sep_id:
            parts.append(cur)
            cur = []
        else:
            cur.append(int(t))
    return parts


def test_round_trip_gives_back_the_normalised_utterances(tmp_path, tokenizer):
    summary, out = run(tmp_path, max_len=512, valid_count=2)
    cls_id, sep_id = tokenizer.convert_tokens_to_ids(CLS), tokenizer.convert_tokens_to_ids(SEP)
    expected = []
    for d in DIALOGUES:
        norm = [normalize(u) for u in d]
        expected.append([encode(tokenizer, u) for u in norm if u])
    train, valid = load_dataset(out, "train"), load_dataset(out, "valid")
    mmi_train, mmi_valid = load_dataset(out, "train", mmi=True), load_dataset(out, "valid", mmi=True)
    dialogue_of = np.fromfile(out / "dialogues.bin", dtype=np.int64)
    got = {}
    for ds, mmi in ((train, mmi_train), (valid, mmi_valid)):
        assert ds.tokens.dtype == np.uint16 and mmi.tokens.dtype == np.uint16
        for k in range(len(ds)):
            w = ds.index[k]
            window, rev = np.asarray(ds[k]), np.asarray(mmi[k])
            assert window[0] == cls_id and rev[0] == cls_id
            got[int(dialogue_of[w])] = split_at_sep(window, sep_id)
            assert split_at_sep(rev, sep_id) == split_at_sep(window, sep_id)[::-1]
    # one window per dialogue here (max_len is large): the windows are the dialogues, in full
    assert [got[i] for i in range(len(DIALOGUES))] == expected
    assert summary.utterances == sum(map(len, expected)) == 14
    assert summary.empty_utterances == 1
    assert summary.tokens == sum(len(u) for d in expected for u in d)
    assert summary.unk == sum(u.count(tokenizer.convert_tokens_to_ids(UNK)) for d in expected for u in d) >= 1  # the emoji


def test_offsets_manifest_and_files(tmp_path, tokenizer):
    summary, out = run(tmp_path, max_len=64, seed=7)
    m = read_manifest(out)
    offsets = np.fromfile(out / "offsets.bin", dtype=np.int64)
    tokens = np.fromfile(out / "tokens.bin", dtype=np.uint16)
    mmi = np.fromfile(out / "tokens_mmi.bin", dtype=np.uint16)
    assert offsets[0] == 0 and offsets[-1] == len(tokens) == len(mmi) == m["counts"]["tokens"]
    assert np.all(np.diff(offsets) > 0) and np.diff(offsets).max() <= 64
    assert len(offsets) == m["counts"]["windows"] + 1 == summary.windows + 1
    assert m["format_version"] == FORMAT_VERSION
    assert m["vocab_hash"] == vocab_hash(read_vocab(VOCAB)) and m["vocab_size"] == len(read_vocab(VOCAB))
    assert m["dtype"] == "uint16" and m["max_len"] == 64
    assert m["sources"] == [str(tmp_path / "ds.jsonl")]
    assert m["split"]["seed"] == 7 and m["split"]["windows"] == summary.split
    assert m["counts"]["dialogues_read"] == m["counts"]["dialogues_kept"] == m["counts"]["dialogues"] == len(DIALOGUES)
    assert m["counts"]["utterances"] == 14 and m["counts"]["empty_utterances_dropped"] == 1
    assert m["counts"]["truncated_utterances"] == 0
    assert m["special_tokens"] == {"cls": tokenizer.convert_tokens_to_ids(CLS), "sep": tokenizer.convert_tokens_to_ids(SEP),
                                   "pad": tokenizer.pad_token_id, "unk": tokenizer.convert_tokens_to_ids(UNK)}
    assert m["window_lengths"]["max"] == int(np.diff(offsets).max())
    # no pickle anywhere: the index arrays load with allow_pickle=False, the rest are raw or JSON
    names = sorted(p.name for p in out.iterdir())
    assert names == ["dialogues.bin", "manifest.json", "offsets.bin", "tokenizer", "tokens.bin", "tokens_mmi.bin",
                     "train.npy", "valid.npy"]
    train = np.load(out / "train.npy", allow_pickle=False)
    valid = np.load(out / "valid.npy", allow_pickle=False)
    assert train.dtype == valid.dtype == np.int64
    assert sorted(train.tolist() + valid.tolist()) == list(range(summary.windows))
    assert not [p for p in out.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt", ".joblib")]
    json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def test_dataset_tokenizer_is_the_one_the_ids_belong_to(tmp_path, tokenizer):
    _, out = run(tmp_path)
    ds = load_dataset(out)
    tok = ds.tokenizer()
    assert tok.get_vocab() == tokenizer.get_vocab()
    assert ds.vocab_hash == vocab_hash([t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])])


def test_load_dataset_refuses_what_is_not_a_dataset(tmp_path):
    with pytest.raises(ChitchatError, match="no manifest.json"):
        load_dataset(tmp_path)
    _, out = run(tmp_path)
    with pytest.raises(ChitchatError, match="unknown split"):
        load_dataset(out, "test")
    # a truncated copy is detected, not read as garbage
    data = (out / "tokens.bin").read_bytes()
    (out / "tokens.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ChitchatError, match="do not match"):
        load_dataset(out)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest["format_version"] = 999
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ChitchatError, match="format 999"):
        load_dataset(out)


def test_output_that_is_not_a_dataset_is_left_alone(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work", encoding="utf-8")
    with pytest.raises(ChitchatError, match="not a chitchat dataset"):
        new_dataset_dir(precious)
    a_file = tmp_path / "a_file"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(ChitchatError, match="not a directory"):
        new_dataset_dir(a_file)
    assert (precious / "thesis.tex").read_text(encoding="utf-8") == "years of work"
    assert a_file.read_text(encoding="utf-8") == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "precious"]  # no temporary left behind


def test_existing_dataset_is_replaced(tmp_path):
    run(tmp_path, dialogues=DIALOGUES)
    summary, out = run(tmp_path, dialogues=DIALOGUES[:2])
    assert read_manifest(out)["counts"]["dialogues"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]  # temporaries cleaned up
