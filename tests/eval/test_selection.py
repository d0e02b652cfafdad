"""`chitchat eval --selection`: Douban-layout files ranked by their own candidates (the shared sample and
a hand-written one), skipped contexts counted, files not in the layout refused in one line."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from chitchat.cli import main
from chitchat.eval.selection import read_selection_file, usable_groups
from support import shared_corpora

CONTEXT_A = "今天 好 累 啊\t早点 休息 吧"
CONTEXT_B = "推荐 一部 电影 吧"
LINES = (
    [f"1\t{CONTEXT_A}\t好 的 晚安"] + [f"0\t{CONTEXT_A}\t错误 回复 {i}" for i in range(9)]  # 10 candidates
    + [f"0\t{CONTEXT_B}\t不 知道", f"1\t{CONTEXT_B}\t看 星际 穿越 吧", f"1\t{CONTEXT_B}\t泰坦尼克号"]  # 3, two true
    + [f"0\t没有 正确 回复\t嗯 {i}" for i in range(3)]  # no true candidate: skipped, counted
    + [f"1\t全 是 对 的\t对 {i}" for i in range(2)]  # no wrong candidate: skipped, counted
)
FAST = ["--candidates", "2", "--max-len", "4", "--no-progress"]


@pytest.fixture()
def small(tmp_path):
    path = tmp_path / "sel.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def test_reader_groups_contexts_normalises_words_and_counts_skips(small):
    skipped = Counter()
    groups = read_selection_file(small, skipped)
    assert len(groups) == 4
    assert groups[0].context == ["今天好累啊", "早点休息吧"] and groups[0].candidates[0] == "好的晚安"
    assert groups[0].labels == [1] + [0] * 9 and groups[1].labels == [0, 1, 1]
    kept = usable_groups(groups, skipped)
    assert len(kept) == 2 and skipped == {"no_true_candidate": 1, "no_wrong_candidate": 1}
    assert len(usable_groups(groups, Counter(), limit=1)) == 1


def test_cli_on_a_small_file(model_dirs, small, tmp_path, capsys):
    dialogue, mmi = map(str, model_dirs)
    out = tmp_path / "out"
    assert main(["eval", "--model", dialogue, "--mmi-model", mmi, "--selection", str(small),
                 "--output", str(out), *FAST]) == 0  # no --data: selection alone
    assert "| R10@1 |" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    sel = report["selection"]
    assert sel["contexts"] == 2 and sel["contexts_10_candidates"] == 1
    assert sel["skipped"] == {"no_true_candidate": 1, "no_wrong_candidate": 1}
    assert report["cases"] == 0 and report["systems"] == {} and report["coherence"] is None
    assert set(sel["systems"]["dialogue"]) == {"likelihood", "mmi", "pmi", "chat"}
    for m in sel["systems"]["dialogue"].values():
        assert m["r10_at_1"] in (0.0, 1.0)  # one context of 10 candidates with one true reply
        assert m["r10_at_1"] <= m["r10_at_2"] <= m["r10_at_5"] and 0 < m["map"] <= 1 and 0 < m["mrr"] <= 1
    assert "R10@5" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("text", ["你好\n\n在吗\n在的\n", "2\t上下文\t回复\n", "1\t只有回复\n"])
def test_a_file_not_in_the_layout_is_one_line(model_dirs, tmp_path, capsys, text):
    bad = tmp_path / "bad.txt"
    bad.write_text(text, encoding="utf-8")
    assert main(["eval", "--model", str(model_dirs[0]), "--selection", str(bad), "--output", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a response-selection file" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "o").exists()


def test_missing_file_and_nothing_to_do_are_one_line(model_dirs, tmp_path, capsys):
    assert main(["eval", "--model", str(model_dirs[0]), "--selection", str(tmp_path / "no.txt"),
                 "--output", str(tmp_path / "o"), *FAST]) == 2
    assert main(["eval", "--model", str(model_dirs[0]), "--output", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such file" in err[0] and "--selection" in err[1]


def test_invalid_utf8_is_one_line(model_dirs, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"1\t\xff\xfe\t\xc3\n")
    assert main(["eval", "--model", str(model_dirs[0]), "--selection", str(bad), "--output", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not UTF-8" in err[0]


def test_shared_douban_sample(model_dirs, tmp_path):
    sample = shared_corpora() / "formats" / "douban_response_selection_sample.txt"
    skipped = Counter()
    groups = usable_groups(read_selection_file(sample, skipped), skipped)
    assert len(groups) + sum(skipped.values()) == 50 and all(len(g.labels) == 10 for g in groups)
    assert all(" " not in "".join(g.context + g.candidates) for g in groups[:5])  # words joined
    out = tmp_path / "douban"
    assert main(["eval", "--model", str(model_dirs[0]), "--selection", str(sample), "--limit", "5",
                 "--output", str(out), *FAST]) == 0
    sel = json.loads((out / "report.json").read_text(encoding="utf-8"))["selection"]
    assert sel["contexts"] == 5 and sel["contexts_10_candidates"] == 5
