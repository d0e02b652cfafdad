"""Every reader on the samples in corpus/, compared with the files parsed independently here."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from chitchat.errors import ChitchatError
from chitchat.corpus.readers import ReadStats, detect_format, expand_inputs, read_corpus
from support import CORPUS


def read(inputs, fmt=None):
    stats = ReadStats()
    dialogues = list(read_corpus([str(i) for i in inputs], stats, fmt))
    return dialogues, stats


def utterances(dialogues):
    return [d.utterances for d in dialogues]


# --- independent parsers of the sample files -------------------------------------------------

def blank_line_dialogues(path: Path) -> list[list[str]]:
    text = path.read_bytes().decode("utf-8-sig")
    blocks = text.replace("\r\n", "\n").split("\n\n")
    return [[line for line in b.split("\n") if line] for b in blocks if b.strip()]


def expected(name: str) -> list[list[str]]:
    path = CORPUS / name
    if name.endswith(".txt") and name.startswith("chitchat"):
        return blank_line_dialogues(path)
    if name == "dialogues.json":
        return json.loads(path.read_text(encoding="utf-8"))
    if name == "lccc_style.json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["train"] + data["valid"]
    if name == "kdconv_style.json":
        return [[m["message"] for m in d["messages"]] for d in json.loads(path.read_text(encoding="utf-8"))]
    if name == "dialogues.jsonl":
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            out.append(record["dialog"] if isinstance(record, dict) else record)
        return out
    if name == "chatterbot.yml":
        return yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]
    if name == "pairs.tsv":
        return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line]
    if name == "pairs_pipe.txt":
        return [line.split("|") for line in path.read_text(encoding="utf-8").splitlines() if line]
    if name == "pairs.csv":
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
        assert rows[0] == ["question", "answer"]
        return rows[1:]
    raise AssertionError(name)


SAMPLES = {
    "chitchat.txt": ("text", 5, 22),
    "chitchat_crlf.txt": ("text", 2, 7),
    "chitchat_bom.txt": ("text", 2, 5),
    "dialogues.json": ("json", 3, 10),
    "lccc_style.json": ("json", 4, 11),
    "kdconv_style.json": ("json", 2, 10),
    "dialogues.jsonl": ("jsonl", 3, 8),
    "chatterbot.yml": ("yaml", 3, 7),
    "pairs.tsv": ("tsv", 3, 7),
    "pairs.csv": ("csv", 2, 5),
    "pairs_pipe.txt": ("pipe", 2, 5),
}


def test_every_sample_format_is_covered():
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_file()) == sorted(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_reader_gives_the_files_dialogues(name):
    fmt, n_dialogues, n_utterances = SAMPLES[name]
    path = CORPUS / name
    assert detect_format(path) == fmt
    dialogues, stats = read([path])
    want = expected(name)
    assert utterances(dialogues) == want
    # the counts, written out, so that the independent parsers above are checked too
    assert len(want) == n_dialogues and sum(map(len, want)) == n_utterances
    assert (stats.files, stats.read, stats.kept, stats.errors) == (1, n_dialogues, n_dialogues, [])
    assert not stats.skipped and not stats.warnings


def test_crlf_and_bom_leave_no_trace():
    for name in ("chitchat_crlf.txt", "chitchat_bom.txt"):
        dialogues, _ = read([CORPUS / name])
        for u in (u for d in dialogues for u in d.utterances):
            assert "\r" not in u and "\ufeff" not in u and u == u.strip()
    assert read([CORPUS / "chitchat_bom.txt"])[0][0].utterances[0] == "早上好"
    assert (CORPUS / "chitchat_bom.txt").read_bytes().startswith(b"\xef\xbb\xbf")
    assert b"\r\n" in (CORPUS / "chitchat_crlf.txt").read_bytes()


def test_sources_name_file_and_position():
    dialogues, _ = read([CORPUS / "chitchat.txt"])
    assert [d.source for d in dialogues][:2] == [f"{CORPUS / 'chitchat.txt'}:1", f"{CORPUS / 'chitchat.txt'}:7"]
    dialogues, _ = read([CORPUS / "lccc_style.json"])
    assert dialogues[-1].source == f"{CORPUS / 'lccc_style.json'}#valid[0]"
    dialogues, _ = read([CORPUS / "dialogues.jsonl"])
    assert dialogues[2].source == f"{CORPUS / 'dialogues.jsonl'}:3"


def test_csv_quoted_fields_keep_their_commas():
    dialogues, _ = read([CORPUS / "pairs.csv"])
    assert dialogues[0].utterances[0] == "你好,在吗?"
    assert dialogues[1].utterances == ["晚上看电影吗?", "好啊,看什么?"]


def test_csv_multiline_quoted_field_and_no_header(tmp_path):
    p = tmp_path / "qa.csv"
    p.write_text('你好,"第一行\n第二行"\n在吗,在的\n', encoding="utf-8")
    dialogues, stats = read([p])
    assert utterances(dialogues) == [["你好", "第一行\n第二行"], ["在吗", "在的"]]
    assert stats.read == 2


def test_chatterbot_chinese_by_name():
    chatterbot_corpus = pytest.importorskip("chatterbot_corpus")
    folder = Path(chatterbot_corpus.__file__).parent / "data" / "chinese"
    files = sorted(folder.glob("*.yml"))
    want = [c for f in files for c in yaml.safe_load(f.read_text(encoding="utf-8"))["conversations"]]
    dialogues, stats = read(["chatterbot:chinese"])
    assert stats.files == len(files) > 10
    assert utterances(dialogues) == [[str(u) for u in c] for c in want]
    assert stats.read == stats.kept == len(want) > 100 and not stats.errors
    one, _ = read(["chatterbot:chinese.greetings"])
    assert utterances(one) == yaml.safe_load((folder / "greetings.yml").read_text(encoding="utf-8"))["conversations"]


@pytest.mark.parametrize("bad", ["chatterbot:klingon", "chatterbot:chinese.nosuchtopic"])
def test_chatterbot_unknown_name(bad):
    with pytest.raises(ChitchatError, match="chatterbot"):
        expand_inputs([bad])


# --- format detection -------------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt", [
    ("dialogues.json", "json"), ("lccc_style.json", "json"), ("kdconv_style.json", "json"),
    ("dialogues.jsonl", "jsonl"), ("chatterbot.yml", "yaml"), ("pairs.tsv", "tsv"),
    ("pairs_pipe.txt", "pipe"), ("chitchat.txt", "text"), ("chitchat_crlf.txt", "text"),
])
def test_detection_from_content_without_a_telling_extension(tmp_path, name, fmt):
    p = tmp_path / "corpus.dat"
    shutil.copy(CORPUS / name, p)
    assert detect_format(p) == fmt
    dialogues, stats = read([p])
    assert utterances(dialogues) == expected(name) and not stats.errors


def test_jsonl_named_json_is_detected(tmp_path):
    p = tmp_path / "lccc.json"
    shutil.copy(CORPUS / "dialogues.jsonl", p)
    assert detect_format(p) == "jsonl"
    assert utterances(read([p])[0]) == expected("dialogues.jsonl")


def test_one_line_json_is_json_not_jsonl(tmp_path):
    p = tmp_path / "one_line.dat"
    p.write_text(json.dumps([["你好", "好"], ["在吗", "在"]], ensure_ascii=False) + "\n", encoding="utf-8")
    assert detect_format(p) == "json"
    assert utterances(read([p])[0]) == [["你好", "好"], ["在吗", "在"]]


def test_format_override(tmp_path):
    # pipe pairs read as plain text: both lines are one dialogue of two utterances
    dialogues, _ = read([CORPUS / "pairs_pipe.txt"], fmt="text")
    assert utterances(dialogues) == [(CORPUS / "pairs_pipe.txt").read_text(encoding="utf-8").splitlines()]
    # a tab-separated file with a .txt extension and blank lines would be sniffed as text
    p = tmp_path / "qa.txt"
    p.write_text("你好\t你好呀\n\n在吗\t在的\n", encoding="utf-8")
    assert detect_format(p) == "text"
    dialogues, _ = read([p], fmt="tsv")
    assert utterances(dialogues) == [["你好", "你好呀"], ["在吗", "在的"]]
    with pytest.raises(ChitchatError, match="unknown format"):
        read([p], fmt="xml")


# --- several inputs: folders, globs ---------------------------------------------------------

def test_folder_reads_every_corpus_file():
    dialogues, stats = read([CORPUS])
    assert stats.files == len(SAMPLES)
    assert stats.read == stats.kept == len(dialogues) == sum(n for _, n, _ in SAMPLES.values())
    assert sum(len(d.utterances) for d in dialogues) == sum(u for _, _, u in SAMPLES.values())
    assert not stats.errors and not stats.skipped


def test_folder_is_searched_recursively_and_in_order(tmp_path):
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    shutil.copy(CORPUS / "pairs.tsv", tmp_path / "b" / "deeper" / "x.tsv")
    shutil.copy(CORPUS / "dialogues.json", tmp_path / "a.json")
    (tmp_path / "notes.md").write_text("not a corpus", encoding="utf-8")
    assert expand_inputs([str(tmp_path)]) == [tmp_path / "a.json", tmp_path / "b" / "deeper" / "x.tsv"]
    dialogues, _ = read([tmp_path])
    assert utterances(dialogues) == expected("dialogues.json") + expected("pairs.tsv")


def test_glob_and_several_inputs_in_one_run():
    paths = expand_inputs([str(CORPUS / "*.json")])
    assert [p.name for p in paths] == ["dialogues.json", "kdconv_style.json", "lccc_style.json"]
    dialogues, stats = read([CORPUS / "pairs.tsv", str(CORPUS / "*.json"), CORPUS / "chatterbot.yml"])
    want = (expected("pairs.tsv") + expected("dialogues.json") + expected("kdconv_style.json")
            + expected("lccc_style.json") + expected("chatterbot.yml"))
    assert utterances(dialogues) == want
    assert stats.files == 5 and stats.read == len(want) == 3 + 3 + 2 + 4 + 3


@pytest.mark.parametrize("inputs, message", [
    (["corpus/no_such_file.txt"], "no such file"),
    (["corpus/*.nothing"], "no file matches"),
])
def test_missing_inputs_are_errors(inputs, message):
    with pytest.raises(ChitchatError, match=message):
        expand_inputs(inputs)


def test_folder_without_corpus_files_is_an_error(tmp_path):
    (tmp_path / "readme.md").write_text("x", encoding="utf-8")
    with pytest.raises(ChitchatError, match="holds no corpus file"):
        expand_inputs([str(tmp_path)])


# --- bad records are counted skips, not crashes ------------------------------------------------

def test_jsonl_bad_lines_are_counted(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(b'["\xe4\xbd\xa0\xe5\xa5\xbd", "\xff"]\n'      # line 1: not UTF-8
                  + b'{not json}\n'                                # line 2: not JSON
                  + b'42\n'                                        # line 3: wrong shape
                  + b'\n'                                          # blank lines are ignored
                  + '["你好", "你好呀"]\n'.encode())               # line 5: good
    dialogues, stats = read([p])
    assert utterances(dialogues) == [["你好", "你好呀"]]
    assert stats.read == 4 and stats.kept == 1
    assert dict(stats.skipped) == {"invalid_utf8": 1, "invalid_json": 1, "bad_shape": 1}
    assert stats.warnings[0].startswith(f"{p}:1: skipped (invalid_utf8)")
    assert stats.warnings[1].startswith(f"{p}:2: skipped (invalid_json)")
    assert stats.warnings[2].startswith(f"{p}:3: skipped (bad_shape)")


def test_text_bad_line_skips_its_dialogue_only(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("你好\n".encode() + b"\xc3\x28 broken\n" + "在吗\n\n早\n早上好\n".encode())
    dialogues, stats = read([p])
    assert utterances(dialogues) == [["早", "早上好"]]
    assert dict(stats.skipped) == {"invalid_utf8": 1}
    assert stats.warnings == [f"{p}:1: skipped (invalid_utf8): line 2 is not valid UTF-8"]


def test_csv_bad_line_is_counted(tmp_path):
    p = tmp_path / "qa.csv"
    p.write_bytes("你好,你好呀\n".encode() + b"\xff\xfe,x\n" + "在吗,在的\n".encode())
    dialogues, stats = read([p])
    assert utterances(dialogues) == [["你好", "你好呀"], ["在吗", "在的"]]
    assert dict(stats.skipped) == {"invalid_utf8": 1} and stats.warnings[0].startswith(f"{p}:2:")


def test_json_records_of_the_wrong_shape_are_counted(tmp_path):
    p = tmp_path / "mixed.json"
    p.write_text(json.dumps([["你好", "好"], 7, {"x": 1}, ["a", None], {"messages": [{"message": "嗨"}, {"message": "嗨嗨"}]}]),
                 encoding="utf-8")
    dialogues, stats = read([p])
    assert utterances(dialogues) == [["你好", "好"], ["嗨", "嗨嗨"]]
    assert dict(stats.skipped) == {"bad_shape": 3} and stats.read == 5
    assert stats.warnings[0] == f"{p}[1]: skipped (bad_shape): expected a list of utterances, got int"


def test_json_object_without_lists_is_a_file_error(tmp_path):
    p = tmp_path / "strings.json"
    p.write_text('{"a": "x", "b": "y"}', encoding="utf-8")
    dialogues, stats = read([p])
    assert dialogues == [] and len(stats.errors) == 1
    assert stats.errors[0].startswith(f"{p}: JSON object holds no list of dialogues")


def test_json_object_reads_only_its_list_keys(tmp_path):
    p = tmp_path / "splits.json"
    p.write_text(json.dumps({"name": "toy", "train": [["a1", "a2"]], "meta": {"n": 1}, "valid": [["b1", "b2"]]}),
                 encoding="utf-8")
    dialogues, stats = read([p])
    assert utterances(dialogues) == [["a1", "a2"], ["b1", "b2"]] and not stats.errors and not stats.skipped


def test_many_skips_keep_a_bounded_warning_list(tmp_path):
    p = tmp_path / "junk.jsonl"
    p.write_text("1\n" * 100, encoding="utf-8")
    _, stats = read([p])
    assert stats.skipped["bad_shape"] == 100 and stats.warning_count == 100 and len(stats.warnings) == 20


def test_folder_leaves_out_datasets_and_hidden_entries(tmp_path):
    shutil.copy(CORPUS / "dialogues.json", tmp_path / "a.json")
    dataset = tmp_path / "ds"  # what `chitchat preprocess data -o data/ds` leaves for the next run
    (dataset / "tokenizer").mkdir(parents=True)
    (dataset / "manifest.json").write_text('{"sources": ["a.json"]}', encoding="utf-8")
    (dataset / "tokens.bin").write_bytes(b"\0\0")
    (dataset / "tokenizer" / "tokenizer.json").write_text('{"added_tokens": []}', encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.json").write_text("[]", encoding="utf-8")
    (tmp_path / ".ds.tmp-123").mkdir()
    (tmp_path / ".ds.tmp-123" / "manifest.json").write_text("{}", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("a\nb\n", encoding="utf-8")
    assert expand_inputs([str(tmp_path)]) == [tmp_path / "a.json"]
    # a file named explicitly is read whatever folder it is in
    assert expand_inputs([str(tmp_path / ".hidden.txt")]) == [tmp_path / ".hidden.txt"]
