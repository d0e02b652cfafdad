"""`chitchat eval --ranking`: the generated replies are chosen by it, the report says which, and the
coherence part's "chat" scoring is that ranking."""

from __future__ import annotations

import json

import pytest

from chitchat.cli import main
from chitchat.model.gpt2 import build_model, save_model
from chitchat.tokens.tokenizer import DEFAULT_VOCAB, load_tokenizer

DIALOGUES = [["你好", "你好呀,今天过得怎么样", "还不错,刚下班"], ["晚饭吃什么", "吃面条吧"], ["周末去爬山吗", "好啊,几点出发"]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranking_models")
    tokenizer = load_tokenizer(DEFAULT_VOCAB)
    for name, seed in (("dialogue", 1), ("mmi", 3)):
        save_model(build_model(tokenizer, "tiny", seed=seed), tokenizer, root / name)
    return root


def test_ranking_flag_chooses_the_replies_and_is_reported(models, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DIALOGUES), encoding="utf-8")
    argv = ["eval", "--model", str(models / "dialogue"), "--mmi-model", str(models / "mmi"), "--data", str(data),
            "--no-progress", "--candidates", "3", "--max-len", "6", "--negatives", "1"]
    assert main([*argv, "--output", str(tmp_path / "out"), "--ranking", "mmi+0.5*pmi"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["settings"]["reply"]["ranking"] == "mmi+0.5*pmi" and report["settings"]["chat_ranking"] == "mmi+0.5*pmi"
    assert [s["ranking"] for s in report["systems"].values()] == ["mmi+0.5*pmi"]
    for line in (tmp_path / "out" / "cases.jsonl").read_text(encoding="utf-8").splitlines():
        candidates = next(iter(json.loads(line)["models"].values()))["candidates"]
        assert all({"likelihood", "mmi", "pmi"} <= set(c["scores"]) for c in candidates)
    assert main([*argv, "--output", str(tmp_path / "bad"), "--ranking", "bleu"]) != 0
    assert "unknown scoring 'bleu'" in capsys.readouterr().err
