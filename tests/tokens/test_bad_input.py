"""Bad input through the real CLI (child processes): a one-line message naming the file (and line),
or a counted skip; never a traceback; exit status 2 when nothing usable was read.

The child processes of all cases run two at a time, once, from a module fixture; each test then
checks its own case.
"""

import gzip
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from chitchat.tokens.dataset import load_dataset, read_manifest
from support import run_chitchat

GOOD = "你好\n你好呀\n\n在吗\n在的,有事吗?\n"


def _case_files(d: Path) -> dict:
    """name -> (inputs, extra args). Files are made in `d/name/`."""
    cases = {}

    def make(name, files, inputs=None, args=()):
        folder = d / name
        folder.mkdir()
        for fname, content in files.items():
            data = content if isinstance(content, bytes) else content.encode("utf-8")
            (folder / fname).write_bytes(data)
        cases[name] = ([str(folder / i) for i in (inputs or files)], list(args))
        return folder

    make("invalid_utf8_text", {"bad.txt": "你好\n".encode() + b"\xff\xfe oops\n" + "在吗\n".encode()})
    make("invalid_utf8_jsonl", {"bad.jsonl": b'["\xe4\xbd\xa0\xe5\xa5\xbd", "\xff"]\n'})
    make("invalid_utf8_json", {"bad.json": b'[["\xe4\xbd\xa0\xe5\xa5\xbd", "\xff\xfe"], ["a", "b"]]'})
    make("invalid_utf8_yaml", {"bad.yml": b"conversations:\n- - \xff\xfe\n  - hi\n"})
    make("empty_file", {"empty.txt": b""})
    make("missing_file", {}, inputs=["missing.txt"])
    make("one_utterance", {"one.txt": "只有一句话\n"})
    make("control_characters_only", {"ctrl.txt": "\x00\x01\x02\n\x07\x1b\u200b\n"})
    # usable despite their oddities: control characters inside utterances, a 1 MB line
    make("odd_but_usable", {"ctrl.txt": "你\x00好\x1b\n在\x07吗\u200b\n", "big.txt": "你" * 1_000_000 + "\n好的\n"})
    make("json_list_of_numbers", {"numbers.json": "[1, 2, 3]"})
    make("json_object_of_strings", {"strings.json": '{"a": "x", "b": "y"}'})
    make("truncated_json", {"trunc.json": '[["你好", "在'})
    make("unequal_pair", {"a.post": "你好\n在吗\n早\n", "a.response": "你好呀\n在的\n"})
    make("rows_without_text_column", {"rows.csv": "Dialogue_ID,Speaker\n1,a\n1,b\n"})
    # a gzip stream cut in the middle: what decompressed before the cut (~5 MB) is kept, to within the
    # last megabyte or two (the readers take a megabyte of lines at a time)
    packed = gzip.compress("".join(f'["你好{i}", "你好呀{i}"]\n' for i in range(300_000)).encode())
    make("truncated_gzip", {"cut.jsonl.gz": packed[:len(packed) // 2]})
    folder = make("output_not_a_dataset", {"good.txt": GOOD})
    (folder / "out").mkdir()
    (folder / "out" / "keep.me").write_text("precious", encoding="utf-8")
    folder = make("output_is_a_file", {"good.txt": GOOD})
    (folder / "out").write_text("precious", encoding="utf-8")
    rng = random.Random(0)
    make("mixed_folder", {
        "a_good.txt": GOOD,
        "b_bad.txt": "早\n".encode() + b"\xc3\x28\n\n" + "晚安\n晚安,好梦\n".encode(),
        "c_empty.json": b"",
        "d_trunc.json": '[["你好", "在吗"], ["早", "早上'.encode(),
        "e_mixed.jsonl": b'["ok", "fine"]\n{broken\n["\xff", "x"]\n7\n["single"]\n',
        "f_numbers.json": b"[1, 2]",
        "g_scalar.json": b"42",
        "h_list.yml": b"- a\n- b\n",
        "z_binary.txt": rng.randbytes(3000),  # last: its many skips come after the others' warnings
    })
    cases["mixed_folder"] = ([str(d / "mixed_folder")], [])
    return cases


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_input")
    cases = _case_files(d)

    def run(name):
        inputs, args = cases[name]
        out = d / name / "out"
        return name, run_chitchat("preprocess", *inputs, "-o", out, "--no-progress", *args), out

    with ThreadPoolExecutor(max_workers=2) as pool:
        return {name: (proc, out) for name, proc, out in pool.map(run, sorted(cases))}


# name -> (exit status, patterns that must be in stderr); "{d}" is the case's folder
EXPECTED = {
    "invalid_utf8_text": (2, [r"warning: {d}/bad\.txt:1: skipped \(invalid_utf8\): line 2 is not valid UTF-8"]),
    "invalid_utf8_jsonl": (2, [r"warning: {d}/bad\.jsonl:1: skipped \(invalid_utf8\)"]),
    "invalid_utf8_json": (2, [r"error: {d}/bad\.json: invalid UTF-8 or JSON near byte \d+: lexical error: invalid bytes in UTF8 string\.$"]),
    "invalid_utf8_yaml": (2, [r"error: {d}/bad\.yml: invalid UTF-8 .*at position \d+"]),
    "empty_file": (2, [r"error: {d}/empty\.txt: empty file"]),
    "missing_file": (2, [r"chitchat preprocess: error: \S*missing\.txt: no such file or folder"]),
    "one_utterance": (2, [r"warning: {d}/one\.txt:1: skipped \(fewer_than_2_utterances\)"]),
    "control_characters_only": (2, [r"warning: {d}/ctrl\.txt:1: skipped \(fewer_than_2_utterances\)"]),
    "odd_but_usable": (0, []),
    "json_list_of_numbers": (2, [r"warning: {d}/numbers\.json\[0\]: skipped \(bad_shape\): expected a list of utterances, got int",
                                 r"warning: {d}/numbers\.json\[2\]: skipped \(bad_shape\)"]),
    "json_object_of_strings": (2, [r"error: {d}/strings\.json: JSON object holds no list of dialogues \(keys: a, b\)"]),
    "truncated_json": (2, [r"error: {d}/trunc\.json: invalid JSON near byte \d+: parse error: premature EOF"]),
    "unequal_pair": (2, [r"error: {d}/a\.post has 3 lines but {d}/a\.response has 2: line-aligned files need one line per exchange$"]),
    "rows_without_text_column": (2, [r"error: {d}/rows\.csv: header has no text column \(columns: Dialogue_ID, Speaker\); name it with --text-column$"]),
    "truncated_gzip": (0, [r"error: {d}/cut\.jsonl\.gz: corrupt or truncated compressed data: Compressed file ended"]),
    "output_not_a_dataset": (2, [r"chitchat preprocess: error: {d}/out exists and is not a chitchat dataset"]),
    "output_is_a_file": (2, [r"chitchat preprocess: error: {d}/out exists and is not a directory"]),
    "mixed_folder": (0, [
        r"warning: {d}/b_bad\.txt:1: skipped \(invalid_utf8\): line 2 is not valid UTF-8",
        r"error: {d}/c_empty\.json: empty file",
        r"error: {d}/d_trunc\.json: invalid JSON near byte \d+: parse error: premature EOF",
        r"warning: {d}/e_mixed\.jsonl:2: skipped \(invalid_json\)",
        r"warning: {d}/e_mixed\.jsonl:3: skipped \(invalid_utf8\)",
        r"warning: {d}/e_mixed\.jsonl:4: skipped \(bad_shape\)",
        r"warning: {d}/e_mixed\.jsonl:5: skipped \(fewer_than_2_utterances\)",
        r"warning: {d}/f_numbers\.json\[1\]: skipped \(bad_shape\)",
        r"error: {d}/g_scalar\.json: not a JSON list or object of dialogues",
        r"error: {d}/h_list\.yml: YAML without a 'conversations:' list",
        r"warning: {d}/z_binary\.txt:\d+: skipped \(invalid_utf8\)",
    ]),
}
_LINE = re.compile(r"(error|warning): \S.*|chitchat preprocess: error: \S.*")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_input_is_reported_in_one_line(results, name):
    proc, out = results[name]
    status, patterns = EXPECTED[name]
    d = re.escape(str(out.parent))
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == status, proc.stderr
    lines = proc.stderr.splitlines()
    for line in lines:  # every line is a one-line message of its own
        assert _LINE.fullmatch(line), f"unexpected stderr line: {line!r}"
    for pattern in patterns:
        rx = re.compile(pattern.replace("{d}", d))
        assert any(rx.search(line) for line in lines), f"{pattern} not in:\n{proc.stderr}"
    if status == 2:
        assert lines[-1].startswith("chitchat preprocess: error: ")
        # nothing half-written is left beside the output
        assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]


def test_nothing_is_written_when_nothing_was_read(results):
    for name in ("invalid_utf8_text", "empty_file", "one_utterance", "truncated_json"):
        assert not results[name][1].exists()
    keep = results["output_not_a_dataset"][1] / "keep.me"
    assert keep.read_text(encoding="utf-8") == "precious"
    assert results["output_is_a_file"][1].read_text(encoding="utf-8") == "precious"


def test_control_characters_are_removed_and_a_1mb_line_is_truncated(results):
    proc, out = results["odd_but_usable"]
    m = read_manifest(out)
    assert m["counts"]["dialogues"] == 2 and m["counts"]["utterances"] == 4
    assert m["counts"]["truncated_utterances"] == 1 and "truncated 1" in proc.stdout
    assert m["counts"]["empty_utterances_dropped"] == 0
    assert m["window_lengths"]["max"] <= m["max_len"]
    owner = np.fromfile(out / "dialogues.bin", dtype=np.int64)
    tokens = np.fromfile(out / "tokens.bin", dtype=np.uint16)
    offsets = np.fromfile(out / "offsets.bin", dtype=np.int64)
    tok = load_dataset(out).tokenizer()
    texts = {0: [], 1: []}
    for w in range(len(owner)):
        texts[int(owner[w])].append(tok.decode(tokens[offsets[w]:offsets[w + 1]].tolist(), skip_special_tokens=True))
    # inputs are read in the order given: ctrl.txt, then big.txt, whose cut utterance fills a window alone
    assert texts[0] == ["你好在吗"]
    assert texts[1] == ["你" * (m["max_len"] - 2), "好的"]


def test_mixed_folder_keeps_the_good_and_counts_the_bad(results):
    proc, out = results["mixed_folder"]
    m = read_manifest(out)
    c = m["counts"]
    assert c["files"] == 9 and c["file_errors"] == 4  # empty, truncated, scalar JSON; YAML of the wrong shape
    # good.txt 2, b_bad.txt 1 of 2, d_trunc.json 1 (before the cut), e_mixed.jsonl 1 of 5
    assert c["dialogues_kept"] == 5
    assert c["skipped"]["invalid_json"] == 1 and c["skipped"]["bad_shape"] == 3
    assert c["skipped"]["fewer_than_2_utterances"] >= 1 and c["skipped"]["invalid_utf8"] >= 3
    assert c["dialogues_read"] == c["dialogues_kept"] + sum(c["skipped"].values())
    assert "dialogues read" in proc.stdout and "kept 5" in proc.stdout
