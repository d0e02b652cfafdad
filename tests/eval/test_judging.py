"""Judged evaluation (chitchat.eval.judging, `chitchat judge`): blind sheets (no system named, the key apart,
identical pairs merged, seeded orders), readers of cases.jsonl and generic replies, the scoring math
against hand computation, one-line errors for bad judgments, the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chitchat.cli import main
from chitchat.errors import ChitchatError
from chitchat.eval.judging import (HUMAN, Answer, cohen_kappa, fleiss_kappa, load_key, read_cases, read_replies, score,
                                   write_sheet)

C1, C2, C3 = ("你好",), ("晚饭吃了吗",), ("周末去哪", "还没想好")
# (system, data, case, context, reply): X and Y give the same reply to C1 (one item); 8 items, 9 replies
REPLIES = [
    ("SYSTEM_X", "d1", "c1", C1, "好的"), ("SYSTEM_X", "d1", "c2", C2, "好的"), ("SYSTEM_X", "d2", "c3", C3, "去公园"),
    ("SYSTEM_Y", "d1", "c1", C1, "好的"), ("SYSTEM_Y", "d1", "c2", C2, "吃了,你呢"), ("SYSTEM_Y", "d2", "c3", C3, "不知道"),
    (HUMAN, "d1", "c1", C1, "你好呀,好久不见"), (HUMAN, "d1", "c2", C2, "还没呢"), (HUMAN, "d2", "c3", C3, "去图书馆"),
]
# (sensible, specific) of each (context, reply) by two judges
JUDGE1 = {(C1, "好的"): (1, 0), (C2, "好的"): (0, 0), (C3, "去公园"): (1, 1), (C2, "吃了,你呢"): (1, 1),
          (C3, "不知道"): (1, 0), (C1, "你好呀,好久不见"): (1, 1), (C2, "还没呢"): (1, 1), (C3, "去图书馆"): (1, 1)}
JUDGE2 = {**JUDGE1, (C2, "好的"): (1, 0), (C3, "不知道"): (0, 0), (C2, "还没呢"): (1, 0)}


def answers(replies=REPLIES) -> list[Answer]:
    return [Answer(*r) for r in replies]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_judgments(path: Path, key: dict, marks: dict, order: list[str] | None = None, drop=()) -> Path:
    items = key["items"]
    ids = [i for i in (order or list(items)) if i not in drop]
    path.write_text("".join(json.dumps({"id": i, "sensible": marks[(tuple(items[i]["context"]), items[i]["reply"])][0],
                                        "specific": marks[(tuple(items[i]["context"]), items[i]["reply"])][1]}) + "\n"
                            for i in ids), encoding="utf-8")
    return path


def test_the_sheet_names_no_system_and_the_key_maps_each_item_to_every_system_that_gave_it(tmp_path):
    key = write_sheet(answers(), tmp_path / "s", judges=2, seed=3)
    out = tmp_path / "s"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["instructions.md", "key.json", "sheet.jsonl", "sheet.md", "sheet_judge1.jsonl", "sheet_judge1.md",
         "sheet_judge2.jsonl", "sheet_judge2.md"])
    for name in ("sheet.jsonl", "sheet.md", "sheet_judge1.jsonl", "sheet_judge2.md", "instructions.md"):
        text = (out / name).read_text(encoding="utf-8")
        assert "SYSTEM_" not in text and HUMAN not in text and "d1" not in text, name
    sheet = lines(out / "sheet.jsonl")
    assert all(set(item) == {"id", "context", "reply"} for item in sheet)
    assert len(sheet) == 8 and len({i["id"] for i in sheet}) == 8  # 9 replies, X and Y agree once
    assert all(len(i["id"]) == 8 and int(i["id"], 16) >= 0 for i in sheet)
    assert load_key(out / "key.json") == key and key["answers"] == 9
    assert key["systems"] == ["SYSTEM_X", "SYSTEM_Y", HUMAN] and key["data"] == ["d1", "d2"]
    merged = [it for it in key["items"].values() if len(it["answers"]) > 1]
    assert len(merged) == 1 and merged[0]["reply"] == "好的" and merged[0]["context"] == list(C1)
    assert {a["system"] for a in merged[0]["answers"]} == {"SYSTEM_X", "SYSTEM_Y"}
    assert "sensible" in (out / "instructions.md").read_text(encoding="utf-8")
    md = (out / "sheet_judge1.md").read_text(encoding="utf-8")
    assert "- B: 周末去哪\n- A: 还没想好\n- **B (reply)**:" in md  # turns alternate up to the reply
    with pytest.raises(ChitchatError, match="already holds a judging sheet"):
        write_sheet(answers(), out)


def test_orders_follow_the_seed_not_the_input_and_each_judge_has_its_own(tmp_path):
    many = [(s, "d", f"c{k}", (f"第{k}句",), f"{s}的回答{k}") for k in range(15) for s in ("a", "b")]

    def sheets(tmp: Path, replies, seed):
        write_sheet(answers(replies), tmp, judges=3, seed=seed)
        return [(tmp / f"sheet{s}.jsonl").read_text(encoding="utf-8") for s in ("", "_judge1", "_judge2", "_judge3")]

    one = sheets(tmp_path / "one", many, 5)
    again = sheets(tmp_path / "again", list(reversed(many)), 5)
    other = sheets(tmp_path / "other", many, 6)
    assert one == again  # byte for byte, whatever the input order
    assert one[0] != other[0]
    orders = [[i["id"] for i in map(json.loads, s.splitlines())] for s in one]
    assert len({tuple(o) for o in orders}) == 4 and all(sorted(o) == sorted(orders[0]) for o in orders)


def test_contexts_are_sampled_in_all_or_per_data_file(tmp_path):
    replies = [(s, d, f"c{k}", (f"{d}第{k}句",), f"{s}{k}") for d in ("d1", "d2") for k in range(10) for s in ("a", "b")]
    key = write_sheet(answers(replies), tmp_path / "all", contexts=4, seed=1)
    assert key["contexts"] == 4 and key["answers"] == 8 and len(key["items"]) == 8
    key = write_sheet(answers(replies), tmp_path / "each", contexts=3, per_data=True, seed=1)
    cases = {(a["data"], a["case"]) for it in key["items"].values() for a in it["answers"]}
    assert key["contexts"] == 6 and sorted({d for d, _ in cases}) == ["d1", "d2"] and len(cases) == 6


def test_scores_per_system_and_data_file_and_agreement_match_hand_computation(tmp_path):
    key = write_sheet(answers(), tmp_path / "s", seed=2)
    j1 = write_judgments(tmp_path / "j1.jsonl", key, JUDGE1)
    j2 = write_judgments(tmp_path / "j2.jsonl", key, JUDGE2, order=list(reversed(key["items"])))
    report = score(tmp_path / "s" / "key.json", [j1, j2])
    x, y, h = (report["systems"][s] for s in ("SYSTEM_X", "SYSTEM_Y", HUMAN))
    # X: judge 1 (1,0) (0,0) (1,1) -> 2/3, 1/3; judge 2 (1,0) (1,0) (1,1) -> 1, 1/3
    assert x["by_judge"]["j1"]["sensible"] == pytest.approx(2 / 3) and x["by_judge"]["j1"]["ssa"] == pytest.approx(0.5)
    assert (x["sensible"], x["specific"], x["ssa"], x["n"]) == pytest.approx((5 / 6, 1 / 3, 7 / 12, 3))
    assert (y["sensible"], y["specific"], y["ssa"], y["n"]) == pytest.approx((5 / 6, 1 / 3, 7 / 12, 3))
    assert (h["sensible"], h["specific"], h["ssa"]) == pytest.approx((1, 5 / 6, 11 / 12))
    assert x["relevance"] is None
    d1x, d2y = report["data"]["d1"]["SYSTEM_X"], report["data"]["d2"]["SYSTEM_Y"]
    assert (d1x["sensible"], d1x["specific"], d1x["ssa"], d1x["n"]) == pytest.approx((0.75, 0, 0.375, 2))
    assert (d2y["sensible"], d2y["specific"], d2y["ssa"], d2y["n"]) == pytest.approx((0.5, 0, 0.25, 1))
    (pair,) = report["agreement"]["pairs"]
    assert pair["judges"] == ["j1", "j2"] and pair["items"] == 8
    # sensible: 6/8 agree, both 7/8 ones: chance 50/64, kappa (48-50)/(64-50) = -1/7
    assert pair["sensible"]["agreement"] == pytest.approx(0.75) and pair["sensible"]["kappa"] == pytest.approx(-1 / 7)
    # specific: 7/8 agree, 5/8 and 4/8 ones: chance 1/2, kappa 3/4
    assert pair["specific"]["agreement"] == pytest.approx(7 / 8) and pair["specific"]["kappa"] == pytest.approx(0.75)
    assert "all" not in report["agreement"]
    assert [j["missing"] for j in report["judges"]] == [0, 0]


def test_kappas_by_hand_and_a_missing_item_is_counted(tmp_path):
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)  # po 3/4, pe 1/2
    assert cohen_kappa([1, 1], [1, 1]) is None and cohen_kappa([], []) is None
    # rows of 3 judges: ones 3, 2, 0, 1 -> P_i 1, 1/3, 1, 1/3; p = 1/2 -> kappa (2/3 - 1/2) / (1/2) = 1/3
    assert fleiss_kappa([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]]) == pytest.approx(1 / 3)
    key = write_sheet(answers(), tmp_path / "s", seed=2)
    left_out = next(iter(key["items"]))
    paths = [write_judgments(tmp_path / "a.jsonl", key, JUDGE1), write_judgments(tmp_path / "b.jsonl", key, JUDGE2),
             write_judgments(tmp_path / "c.jsonl", key, JUDGE1, drop={left_out})]
    report = score(key, paths)
    assert [(j["judged"], j["missing"]) for j in report["judges"]] == [(8, 0), (8, 0), (7, 1)]
    assert report["judges"][2]["missing_ids"] == [left_out]
    every = report["agreement"]["all"]
    assert every["items"] == 7 and len(report["agreement"]["pairs"]) == 3
    kappas = [p["sensible"]["kappa"] for p in report["agreement"]["pairs"]]
    assert every["sensible"]["mean_pairwise_kappa"] == pytest.approx(sum(kappas) / 3)
    assert every["sensible"]["fleiss_kappa"] is not None


@pytest.mark.parametrize("line, message", [
    ('{"id": "nope", "sensible": 1, "specific": 0}', "unknown id"),
    ('{"id": "ID", "sensible": 0, "specific": 1}', "specific 1 with sensible 0"),
    ('{"id": "ID", "specific": 0}', "sensible must be 0 or 1"),
    ('{"id": "ID", "sensible": 2, "specific": 0}', "sensible must be 0 or 1"),
    ('{"id": "ID", "sensible": 1}', "specific must be 0 or 1"),
    ('{"id": "ID", "sensible": 1, "specific": 1, "relevance": 9}', "relevance must be 1 to 5"),
    ('{"id": "ID", "sensible": 1, "specific": 0', "not a JSON line"),
    ('["ID", 1, 0]', "not a JSON object"),
    ('{"id": "FIRST", "sensible": 1, "specific": 0}', "judged a second time"),
])
def test_a_bad_judgment_line_is_a_one_line_error_naming_file_and_line(tmp_path, line, message):
    key = write_sheet(answers(), tmp_path / "s")
    first, second = list(key["items"])[:2]
    path = tmp_path / "judge.jsonl"  # line 1 fine, line 2 blank, line 3 bad
    path.write_text(f'{{"id": "{first}", "sensible": 1, "specific": 1}}\n\n'
                    + line.replace("FIRST", first).replace("ID", second) + "\n", encoding="utf-8")
    with pytest.raises(ChitchatError) as e:
        score(key, [path])
    assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value) and "\n" not in str(e.value)


def test_a_not_sensible_reply_may_leave_specific_out(tmp_path):
    key = write_sheet(answers(), tmp_path / "s")
    path = tmp_path / "j.jsonl"
    path.write_text("".join(json.dumps({"id": i, "sensible": False}) + "\n" for i in key["items"]), encoding="utf-8")
    assert score(key, [path])["systems"]["SYSTEM_X"]["ssa"] == 0


def test_cases_jsonl_columns_are_systems_with_the_reference_as_human(tmp_path):
    case = {"source": "../corpora/cped_valid.jsonl:12/3", "context": ["你好", "你好呀"], "reference": "最近忙吗",
            "systems": {"alpha": {"reply": "还行", "f1_char": 0.1}, "alpha +mmi": {"reply": "挺忙的"}}, "models": {}}
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps(case, ensure_ascii=False) + "\n", encoding="utf-8")
    got = read_cases(path)
    assert [(a.system, a.data, a.case, a.reply) for a in got] == [
        ("alpha", "cped_valid.jsonl", case["source"], "还行"), ("alpha +mmi", "cped_valid.jsonl", case["source"], "挺忙的"),
        (HUMAN, "cped_valid.jsonl", case["source"], "最近忙吗")]
    assert [a.system for a in read_cases(path, "run2", human=False)] == ["run2/alpha", "run2/alpha +mmi"]
    # two runs on the same data: labelled, their references (the same) are one answer, the repeat counted
    key = write_sheet(read_cases(path, "a") + read_cases(path, "b"), tmp_path / "s")
    assert key["systems"] == ["a/alpha", "a/alpha +mmi", HUMAN, "b/alpha", "b/alpha +mmi"]
    assert key["answers"] == 5 and key["repeats_dropped"] == 1 and len(key["items"]) == 3
    with pytest.raises(ChitchatError, match="answered case .* differently .*LABEL=FILE"):
        case["systems"]["alpha"]["reply"] = "不太忙"
        other = tmp_path / "other.jsonl"
        other.write_text(json.dumps(case, ensure_ascii=False) + "\n", encoding="utf-8")
        write_sheet(read_cases(path) + read_cases(other), tmp_path / "t")
    path.write_text('{"source": "x:1/1", "context": []}\n', encoding="utf-8")
    with pytest.raises(ChitchatError, match=r"cases.jsonl:1: not a case of chitchat eval"):
        read_cases(path)


def test_generic_replies_name_their_context_by_its_text(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"system": "s1", "context": ["你好"], "reply": "嗨"}\n'
        '{"system": "s2", "data": "weibo", "case": 7, "context": ["在吗"], "reply": "在"}\n'
        '{"system": "s2", "context": ["你好"], "reply": "你好"}\n', encoding="utf-8")
    a, b, c = read_replies(path)
    assert a.data == "mine.jsonl" and a.case == c.case and a.case.startswith("ctx-")
    assert (b.data, b.case) == ("weibo", "7")
    path.write_text('{"system": "s1", "context": "你好", "reply": "嗨"}\n', encoding="utf-8")
    with pytest.raises(ChitchatError, match=r"mine.jsonl:1: context must be a non-empty list"):
        read_replies(path)


def test_the_command_end_to_end(tmp_path, capsys):
    replies = tmp_path / "replies.jsonl"
    replies.write_text("".join(json.dumps({"system": s, "data": d, "case": c, "context": list(ctx), "reply": r},
                                          ensure_ascii=False) + "\n" for s, d, c, ctx, r in REPLIES), encoding="utf-8")
    out = tmp_path / "sheet"
    assert main(["judge", "sheet", "--replies", str(replies), "-o", str(out), "--judges", "2", "--seed", "4"]) == 0
    assert "8 items: 9 replies of 3 systems" in capsys.readouterr().out
    key = json.loads((out / "key.json").read_text(encoding="utf-8"))
    j1 = write_judgments(tmp_path / "j1.jsonl", key, JUDGE1, [i["id"] for i in lines(out / "sheet_judge1.jsonl")])
    j2 = write_judgments(tmp_path / "j2.jsonl", key, JUDGE2, [i["id"] for i in lines(out / "sheet_judge2.jsonl")])
    assert main(["judge", "score", "--key", str(out / "key.json"), str(j1), str(j2)]) == 0
    printed = capsys.readouterr().out
    assert "| SYSTEM_X | 0.833 | 0.333 | 0.583 | 3 |" in printed and "| j1 / j2 | 8 | 75.0% | -0.143 |" in printed
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["systems"][HUMAN]["ssa"] == pytest.approx(11 / 12)
    assert (out / "report.md").read_text(encoding="utf-8").startswith("# Judged evaluation (SSA)")
    assert main(["judge", "sheet", "--systems", "SYSTEM_Y", "--replies", str(replies), "-o", str(tmp_path / "y")]) == 0
    assert json.loads((tmp_path / "y" / "key.json").read_text(encoding="utf-8"))["systems"] == ["SYSTEM_Y", HUMAN]
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "zz", "sensible": 1, "specific": 1}\n', encoding="utf-8")
    assert main(["judge", "score", "--key", str(out / "key.json"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl:1: unknown id" in err
    assert main(["judge", "sheet", "-o", str(tmp_path / "none")]) == 2
    assert "nothing to judge" in capsys.readouterr().err
