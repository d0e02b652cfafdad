"""The row layouts of real corpora (response selection, `q | a` pairs, line-aligned pairs, one
utterance per row) and compressed input: on the shared samples (../shared/corpora/formats, read in
place), compared with the files parsed independently here, and on generated edge cases."""

import bz2
import csv
import gzip
import itertools
import json
import lzma
import shutil
import zipfile
from pathlib import Path

import pytest

from chitchat.errors import ChitchatError
from chitchat.tokens.preprocess import PreprocessConfig, preprocess
from chitchat.corpus.readers import ReadStats, RowColumns, detect_format, expand_inputs, read_corpus
from support import CORPUS, shared_corpora


def read(inputs, fmt=None, columns=None, pairs=()):
    stats = ReadStats()
    dialogues = list(read_corpus([str(i) for i in inputs], stats, fmt, columns, pairs))
    return [d.utterances for d in dialogues], stats


@pytest.fixture(scope="module")
def formats():
    folder = shared_corpora() / "formats"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


# --- response selection ----------------------------------------------------------------------

def test_douban_sample_one_dialogue_per_context_without_labels_or_wrong_responses(formats):
    path = formats / "douban_response_selection_sample.txt"
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line]
    contexts = [(ctx, list(g)) for ctx, g in itertools.groupby(rows, key=lambda r: r[1:-1])]
    negatives = sum(r[0] == "0" for r in rows)
    assert detect_format(path) == "selection"
    dialogues, stats = read([path])
    assert len(dialogues) == len(contexts) == len({tuple(c) for c, _ in contexts}) == 50
    for d, (ctx, candidates) in zip(dialogues, contexts):
        true = [r[-1] for r in candidates if r[0] == "1"]
        wrong = {r[-1] for r in candidates if r[0] == "0"} - set(true)
        assert d == ctx + true[:1]
        assert not wrong & set(d[len(ctx):])
    assert not any(u in ("0", "1") for d in dialogues for u in d)
    assert stats.skipped["negative_responses"] == negatives == 435
    assert stats.skipped["alternative_responses"] == sum(r[0] == "1" for r in rows) - sum(
        any(r[0] == "1" for r in g) for _, g in contexts)
    assert stats.kept == 50 and not stats.errors and not stats.warnings  # expected skips are not warnings


def test_selection_edge_cases(tmp_path):
    p = tmp_path / "sel.txt"
    p.write_bytes("1\t你好\t在吗\t在的\n0\t你好\t在吗\t去死\n".encode()
                  + b"1\t\xff\xfe\tx\n"                                # not UTF-8
                  + "2\t早\t早上好\n".encode()                          # a label that is neither 0 nor 1
                  + "0\t晚安\t好梦\n0\t晚安\t滚\n".encode()              # no true response: the context alone
                  + "1\t只有回复\n".encode())                           # too few cells
    dialogues, stats = read([p], fmt="selection")
    assert dialogues == [["你好", "在吗", "在的"], ["晚安"]]
    assert dict(stats.skipped) == {"negative_responses": 3, "invalid_utf8": 1, "bad_label": 1, "bad_shape": 1}
    assert stats.kept == 2 and stats.read == 2 + 6
    assert [w.split(": skipped ")[1] for w in stats.warnings] == [
        "(invalid_utf8)", "(bad_label): label '2' is not 0 or 1", "(bad_shape): fewer than 3 tab-separated cells"]


def test_a_wrong_label_column_is_not_response_selection(tmp_path):
    p = tmp_path / "qa.tsv"
    p.write_text("1\t你好\t在吗\n2\t在的\t好\n", encoding="utf-8")  # one label that is not 0/1
    assert detect_format(p) == "tsv"
    q = tmp_path / "ids.tsv"
    q.write_text("0\t你好\n1\t在的\n", encoding="utf-8")  # two cells: an id and a sentence, not a context
    assert detect_format(q) == "tsv"


# --- q | a pairs -----------------------------------------------------------------------------

def test_qingyun_sample_pipe_pairs_in_a_csv(formats):
    path = formats / "qingyun_sample.csv"
    assert detect_format(path) == "pipe"
    dialogues, stats = read([path])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(dialogues) == len(lines) == 200 and stats.kept == 200 and not stats.skipped
    assert all(len(d) == 2 and not any("|" in u for u in d) for d in dialogues)
    assert [q for q, _ in dialogues] == [line.split("|")[0].strip() for line in lines]
    assert dialogues[1] == ["咋死???红烧还是爆炒", "哦了哦了哦了,咱聊点别的吧"]  # the comma stays inside the answer
    assert read([path], fmt="pipe")[0] == dialogues


@pytest.mark.parametrize("content, fmt", [
    ("你好,在吗 | 在的,什么事\n吃了吗 | 吃了\n", "pipe"),
    ("你好,在吗\t在的,什么事\n吃了吗\t吃了\n", "tsv"),
    ('"你好,在吗","在的|什么事"\n吃了吗,吃了\n', "csv"),
])
def test_csv_delimiter_is_sniffed(tmp_path, content, fmt):
    p = tmp_path / "pairs.csv"
    p.write_text(content, encoding="utf-8")
    assert detect_format(p) == fmt
    dialogues, _ = read([p])
    assert dialogues[0] == ["你好,在吗", "在的,什么事" if fmt != "csv" else "在的|什么事"]


# --- line-aligned pairs ----------------------------------------------------------------------

def stc_expected(formats):
    posts = (formats / "stc_sample.post").read_text(encoding="utf-8").splitlines()
    replies = (formats / "stc_sample.response").read_text(encoding="utf-8").splitlines()
    return [[p, r] for p, r in zip(posts, replies, strict=True)]


def test_stc_pair_by_name_in_the_inputs_in_a_folder_and_explicitly(formats, tmp_path):
    want = stc_expected(formats)
    assert len(want) == 300
    dialogues, stats = read([formats / "stc_sample.post", formats / "stc_sample.response"])
    assert dialogues == want and stats.files == 2 and stats.kept == 300
    # in a folder, with the other samples
    dialogues, stats = read([formats])
    assert dialogues[-300:] == want  # the pair is read where its first file stands, last in name order
    assert not stats.errors
    # explicitly, under any names
    shutil.copy(formats / "stc_sample.post", tmp_path / "questions.txt")
    shutil.copy(formats / "stc_sample.response", tmp_path / "answers.txt")
    assert read([], pairs=[(tmp_path / "questions.txt", tmp_path / "answers.txt")])[0] == want


@pytest.mark.parametrize("first, second", [("x.src", "x.tgt"), ("x.source", "x.target"), ("x.post.gz", "x.response.gz")])
def test_other_pair_names(tmp_path, first, second):
    for name, text in ((first, "你好\n在吗\n"), (second, "你好呀\n在的\n")):
        data = text.encode()
        (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert expand_inputs([str(tmp_path)]) == sorted([tmp_path / first, tmp_path / second])
    assert read([tmp_path])[0] == [["你好", "你好呀"], ["在吗", "在的"]]


def test_pair_errors(tmp_path):
    (tmp_path / "a.post").write_text("1\n2\n3\n", encoding="utf-8")
    (tmp_path / "a.response").write_text("1\n2\n", encoding="utf-8")
    dialogues, stats = read([tmp_path / "a.post", tmp_path / "a.response"])
    assert dialogues == []
    assert stats.errors == [f"{tmp_path / 'a.post'} has 3 lines but {tmp_path / 'a.response'} has 2: "
                            "line-aligned files need one line per exchange"]
    (tmp_path / "b.post").write_text("1\n", encoding="utf-8")
    _, stats = read([tmp_path / "b.post"])
    assert stats.errors == [f"{tmp_path / 'b.post'}: line-aligned file without b.response among the inputs (or give both with --pair)"]
    (tmp_path / "c.post").write_bytes(b"")
    (tmp_path / "c.response").write_bytes(b"")
    assert read([tmp_path / "c.post", tmp_path / "c.response"])[1].errors == [f"{tmp_path / 'c.post'} + {tmp_path / 'c.response'}: empty files"]
    (tmp_path / "d.post").write_bytes("你好\n".encode() + b"\xff\n")
    (tmp_path / "d.response").write_bytes("你好呀\n在的\n".encode())
    dialogues, stats = read([tmp_path / "d.post", tmp_path / "d.response"])
    assert dialogues == [["你好", "你好呀"]] and dict(stats.skipped) == {"invalid_utf8": 1}
    with pytest.raises(ChitchatError, match="no such file"):
        read([], pairs=[(tmp_path / "a.post", tmp_path / "missing")])


# --- one utterance per row -------------------------------------------------------------------

def test_cped_rows_sample(formats):
    path = formats / "cped_rows_sample.csv"
    assert detect_format(path) == "rows"
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    ids = [k for k, _ in itertools.groupby(r["Dialogue_ID"] for r in rows)]
    dialogues, stats = read([path])
    assert len(dialogues) == len(ids) == len(set(ids)) == 32 and stats.kept == 32 and not stats.skipped
    assert all(len(d) >= 2 for d in dialogues)
    for d, (_, group) in zip(dialogues, itertools.groupby(rows, key=lambda r: r["Dialogue_ID"])):
        turns = [[r["Utterance"].strip() for r in g] for _, g in itertools.groupby(group, key=lambda r: r["Speaker"])]
        assert d == ["，".join(t) for t in turns]
    # CPED's own dialogues (the JSON lines file beside, made from the same split) join turns alike;
    # the last dialogue of the sample is cut short by the sample's 300 rows
    own = [json.loads(line)["dialog"] for line in (formats.parent / "open" / "cped_train.jsonl").open(encoding="utf-8")]
    assert dialogues[:-1] == own[:len(dialogues) - 1]


def test_rows_options_and_errors(tmp_path):
    p = tmp_path / "chat.tsv"
    p.write_text("conv\twho\tsays\n1\ta\t你好\n1\ta\t在吗?\n1\tb\t在的\n2\ta\t早\n2\tb\t早上好\n", encoding="utf-8")
    assert detect_format(p) == "tsv"  # no known dialogue-id column: plain tab-separated turns
    columns = RowColumns(id_column="conv", text_column="SAYS", speaker_column="who")
    assert detect_format(p, columns) == "rows"
    dialogues, stats = read([p], columns=columns)
    assert dialogues == [["你好，在吗?", "在的"], ["早", "早上好"]]
    # without a speaker column, every row is a turn
    dialogues, _ = read([p], fmt="rows", columns=RowColumns(id_column="conv", text_column="says"))
    assert dialogues == [["你好", "在吗?", "在的"], ["早", "早上好"]]
    # a header without a text column: one line listing the columns it saw
    q = tmp_path / "notext.csv"
    q.write_text("Dialogue_ID,Speaker,Emotion\n1,a,happy\n", encoding="utf-8")
    assert detect_format(q) == "rows"
    dialogues, stats = read([q])
    assert dialogues == [] and stats.errors == [
        f"{q}: header has no text column (columns: Dialogue_ID, Speaker, Emotion); name it with --text-column"]
    _, stats = read([p], fmt="rows", columns=RowColumns(id_column="conv", text_column="words"))
    assert stats.errors == [f"{p}: header has no column 'words' (columns: conv, who, says); name it with --text-column"]


def test_rows_truncated_and_empty(tmp_path):
    p = tmp_path / "cut.csv"
    p.write_text('dialogue_id,text\n1,你好\n1,在吗\n2,"早\n', encoding="utf-8")  # ends inside a quoted field
    dialogues, stats = read([p])
    assert dialogues == [["你好", "在吗"], ["早"]]  # the csv module closes the field at the end of the data
    assert stats.read == 2 and not stats.errors  # preprocessing then skips the one-turn dialogue, counted
    q = tmp_path / "header_only.csv"
    q.write_text("dialogue_id,text\n", encoding="utf-8")
    dialogues, stats = read([q])
    assert dialogues == [] and stats.read == 0 and not stats.errors


def test_rows_bad_rows_are_counted(tmp_path):
    p = tmp_path / "rows.csv"
    p.write_bytes("dialogue_id,speaker,text\n1,a,你好\n1,b\n".encode() + b"1,a,\xff\n" + "1,b,在的\n2,a,\"早,\n早\"\n2,b,好\n".encode())
    dialogues, stats = read([p])
    assert dialogues == [["你好", "在的"], ["早,\n早", "好"]]
    assert dict(stats.skipped) == {"bad_row": 1, "invalid_utf8": 1} and stats.kept == 2
    assert stats.warnings[0] == f"{p}:3: skipped (bad_row): 2 cells, the header has 3"


# --- compressed input ------------------------------------------------------------------------

def test_jsonl_gz_gives_the_same_dataset_byte_for_byte(tmp_path):
    plain = CORPUS / "dialogues.jsonl"
    packed = tmp_path / "dialogues.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for name, src in (("plain", plain), ("gz", packed)):
        preprocess(PreprocessConfig(inputs=[str(src)], output=tmp_path / name, progress=False))
    files = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "gz") for p in (tmp_path / "gz").rglob("*") if p.is_file())
    for f in files:
        a, b = (tmp_path / "plain" / f).read_bytes(), (tmp_path / "gz" / f).read_bytes()
        if f.name == "manifest.json":  # names its sources
            a, b = (json.loads(x) for x in (a, b))
            assert a.pop("sources") == [str(plain)] and b.pop("sources") == [str(packed)]
        assert a == b, f
    # the dataset's tokenizer normalises raw text by itself
    tokenizer = json.loads((tmp_path / "gz" / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    assert tokenizer["normalizer"]["type"] == "Sequence"


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)])
def test_every_compression_and_inner_format(tmp_path, suffix, compress):
    names = ["chitchat.txt", "dialogues.json", "lccc_style.json", "dialogues.jsonl", "chatterbot.yml", "pairs.tsv", "pairs.csv"]
    for name in names:
        (tmp_path / (name + suffix)).write_bytes(compress((CORPUS / name).read_bytes()))
    for name in names:
        assert read([tmp_path / (name + suffix)])[0] == read([CORPUS / name])[0], name
    assert len(expand_inputs([str(tmp_path)])) == len(names)


def test_zip_members(tmp_path):
    z = tmp_path / "corpora.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        for name in ("dialogues.jsonl", "lccc_style.json", "pairs.csv"):
            f.write(CORPUS / name, f"data/{name}")
        f.writestr("README.md", "not a corpus")
    dialogues, stats = read([tmp_path])
    want = sum((read([CORPUS / n])[0] for n in ("dialogues.jsonl", "lccc_style.json", "pairs.csv")), [])
    assert dialogues == want and stats.files == 3 and not stats.errors


def test_damaged_compressed_input_is_a_one_line_error(tmp_path):
    data = gzip.compress((CORPUS / "dialogues.jsonl").read_bytes() * 50)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.json.gz").write_bytes(b"not gzip at all")
    (tmp_path / "empty.txt.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    (tmp_path / "bad.yml.xz").write_bytes(lzma.compress(b"conversations:\n- - hi\n  - ho\n")[:-8])
    _, stats = read([tmp_path])
    errors = sorted(stats.errors)
    assert len(errors) == 5 and all("\n" not in e for e in errors)
    assert errors[0].startswith(f"{tmp_path / 'bad.yml.xz'}: corrupt or truncated compressed data")
    assert errors[1].startswith(f"{tmp_path / 'bad.zip'}: not a readable zip file")
    assert errors[2].startswith(f"{tmp_path / 'cut.jsonl.gz'}: corrupt or truncated compressed data")
    assert errors[3] == f"{tmp_path / 'empty.txt.gz'}: empty file"
    assert errors[4].startswith(f"{tmp_path / 'junk.json.gz'}: corrupt or truncated compressed data")


def test_mixed_folder_of_every_layout(formats, tmp_path):
    for f in formats.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "lone.src").write_text("孤单\n", encoding="utf-8")
    (tmp_path / "pairs.tsv.gz").write_bytes(gzip.compress((CORPUS / "pairs.tsv").read_bytes()))
    dialogues, stats = read([tmp_path])
    assert stats.files == 5 + 1 + 1 and len(stats.errors) == 1 and "lone.src" in stats.errors[0]
    assert len(dialogues) == 32 + 50 + 200 + 300 + 3
    assert stats.read == stats.kept + sum(stats.skipped.values())


def test_cli_pair_and_column_options(tmp_path):
    """`chitchat preprocess --pair A B --text-column ...` through the real CLI."""
    from chitchat.tokens.dataset import read_manifest
    from support import run_chitchat

    (tmp_path / "q.txt").write_text("你好\n在吗\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("你好呀\n在的\n", encoding="utf-8")
    (tmp_path / "chat.csv").write_text("session_id,who,words\n1,a,早\n1,b,早上好\n", encoding="utf-8")
    r = run_chitchat("preprocess", "--pair", tmp_path / "q.txt", tmp_path / "a.txt", tmp_path / "chat.csv",
                     "--text-column", "words", "--speaker-column", "who", "-o", tmp_path / "ds", "--no-progress")
    assert r.returncode == 0, r.stderr
    m = read_manifest(tmp_path / "ds")
    assert m["counts"]["dialogues"] == 3 and m["counts"]["utterances"] == 6
    assert m["sources"] == [str(tmp_path / n) for n in ("chat.csv", "q.txt", "a.txt")]
    r = run_chitchat("preprocess", tmp_path / "chat.csv", "--text-column", "nope", "-o", tmp_path / "ds2", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: {tmp_path / 'chat.csv'}: header has no column 'nope' (columns: session_id, who, words)" in r.stderr
