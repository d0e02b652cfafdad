"""Coherence in `chitchat eval`: distractors from other dialogues only, reproducible by seed, scored as
the engine scores, reported per scoring; `--negatives 0` turns it off; too few utterances is one line.
(test_evaluate.py checks that a rerun with coherence on reproduces report.json byte for byte.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chitchat.cli import main
from chitchat.engine.engine import Engine
from chitchat.engine.replies import Candidate
from chitchat.engine.scoring import Group
from chitchat.errors import ChitchatError
from chitchat.eval.cases import Case, EvalConfig, build_cases, read_dialogues
from chitchat.eval.coherence import draw_negatives
from chitchat.eval.scoring import reference_nll, score_sets
from chitchat.corpus.readers import ReadStats
from support import write_jsonl

DIALOGUES = [[f"第{d}段第{i}句话" for i in range(3)] for d in range(6)] + [["你好", "你好"]]
FAST = ["--candidates", "2", "--max-len", "4", "--no-progress"]


@pytest.fixture()
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", DIALOGUES)


def _cases(data):
    cfg = EvalConfig(models=[], output=Path("x"), data=[str(data)])
    dialogues, _ = read_dialogues(cfg, ReadStats())
    return dialogues, build_cases(cfg, ReadStats())


def test_negatives_come_from_other_dialogues_and_follow_the_seed(data):
    dialogues, cases = _cases(data)
    negs = draw_negatives(dialogues, cases, 5, seed=1)
    for case, drawn in zip(cases, negs):
        assert len(drawn) == 5 == len(set(drawn))
        assert case.reference not in drawn
        assert not set(drawn) & set(dialogues[case.dialogue])  # never from the case's own dialogue
    assert draw_negatives(dialogues, cases, 5, seed=1) == negs
    assert draw_negatives(dialogues, cases, 5, seed=2) != negs
    assert draw_negatives(dialogues, cases, 0, seed=1) == [[] for _ in cases]
    # "你好" answers "你好": the reference itself is never a distractor, even from another dialogue
    hello = Case(["你好"], "你好", "x", dialogue=0)
    assert "你好" not in draw_negatives([["第一句", "你好"], ["你好", "你好"], ["再见"]], [hello], 1, seed=3)[0]


def test_too_few_utterances_for_the_distractors_is_one_clear_error(data):
    dialogues, cases = _cases(data)
    with pytest.raises(ChitchatError, match="--negatives 17") as err:
        draw_negatives(dialogues, cases, 17, seed=1)  # 6 other dialogues of 3 (or 2) utterances
    assert "\n" not in str(err.value)


def test_scores_are_the_engines(model_dirs):
    engine = Engine.load(str(model_dirs[0]), str(model_dirs[1]))
    case = Case(["今天好累啊", "早点休息吧"], "好的,晚安", "x")
    [[true, other]] = score_sets(engine, [(case.context, [case.reference, "吃面条吧"])], ["likelihood", "mmi", "pmi"])
    [(total, n)], _ = reference_nll(engine, [case], 8)
    assert true.scores["likelihood"] == pytest.approx(total / n, rel=1e-5)
    cands = [Candidate(t, engine.encode(t)) for t in (case.reference, "吃面条吧")]
    engine.score([Group([engine.encode(u) for u in case.context], cands)], ["mmi"])
    assert [true.scores["mmi"], other.scores["mmi"]] == pytest.approx([c.scores["mmi"] for c in cands], rel=1e-5)
    empty = engine.fast.sequence_nll([[engine.cls_id, *engine.encode("吃面条吧"), engine.sep_id]], [1], engine.pad_id)
    assert other.scores["pmi"] == pytest.approx(other.scores["likelihood"] - float(empty[0]), rel=1e-5)


def test_cli_reports_every_scoring_and_ranks_per_case(model_dirs, data, tmp_path, capsys):
    dialogue, mmi = map(str, model_dirs)
    out = tmp_path / "one"
    assert main(["eval", "--model", dialogue, "--mmi-model", mmi, "--data", str(data), "--output", str(out),
                 "--negatives", "4", "--seed", "3", *FAST]) == 0
    assert "Recall@1" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    coh = report["coherence"]
    assert coh["negatives"] == 4 and coh["cases"] == report["cases"] == 13
    assert set(coh["systems"]["dialogue"]) == {"likelihood", "mmi", "pmi", "chat"}
    for values in coh["systems"]["dialogue"].values():
        assert 0 <= values["recall_at_1"] <= values["recall_at_2"] <= 1 and 0.2 <= values["mrr"] <= 1
    assert coh["systems"]["dialogue"]["chat"] == coh["systems"]["dialogue"]["mmi"]  # the chat ranks by MMI
    cases = [json.loads(line) for line in (out / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    for c in cases:
        assert len(c["coherence"]["distractors"]) == 4 and c["reference"] not in c["coherence"]["distractors"]
        assert all(1 <= r <= 5 for r in c["coherence"]["ranks"]["dialogue"].values())
    r1 = sum(c["coherence"]["ranks"]["dialogue"]["pmi"] == 1 for c in cases) / len(cases)
    assert coh["systems"]["dialogue"]["pmi"]["recall_at_1"] == pytest.approx(r1)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| the chat's ranking (mmi) |" in md and "| replies cut at the length cap |" in md
    assert 0 <= report["systems"]["dialogue +mmi"]["cut_rate"] <= 1


def test_negatives_0_turns_coherence_off(model_dirs, data, tmp_path):
    out = tmp_path / "off"
    assert main(["eval", "--model", str(model_dirs[0]), "--data", str(data), "--output", str(out),
                 "--negatives", "0", *FAST]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["coherence"] is None and report["cases"] == 13
    assert "Recall@1" not in (out / "report.md").read_text(encoding="utf-8")
    assert "coherence" not in json.loads((out / "cases.jsonl").read_text(encoding="utf-8").splitlines()[0])


def test_too_few_utterances_through_the_cli(model_dirs, data, tmp_path, capsys):
    assert main(["eval", "--model", str(model_dirs[0]), "--data", str(data), "--output", str(tmp_path / "o"),
                 "--negatives", "30", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--negatives 30" in err[0] and "Traceback" not in err[0]
