"""A new scoring is one module plus its registration (tests/engine/toy_scoring.py): with no other file
changed it is in the ranking syntax, eval's report, the API's candidate lists and the chat's /candidates."""

from __future__ import annotations

import importlib
import json

import pytest
from fastapi.testclient import TestClient

from chitchat.chat.repl import Repl
from chitchat.chat.session import Session
from chitchat.cli import main
from chitchat.engine.engine import Engine
from chitchat.engine.ranking import choose, parse_ranking
from chitchat.engine.scoring import SCORINGS, register, unregister, with_needs
from chitchat.engine.settings import ReplySettings
from chitchat.serve.app import create_app
from chitchat.serve.config import ServeConfig


@pytest.fixture()
def brevity():
    module = importlib.import_module("toy_scoring")
    register(module.BREVITY)  # registered on first import; again after an earlier test removed it
    yield module.BREVITY
    unregister("brevity")


def test_the_toy_scoring_is_in_the_ranking_syntax(brevity):
    assert parse_ranking("mmi+0.5*brevity").names == ["mmi", "brevity"]
    assert "brevity" in SCORINGS and with_needs(["brevity", "pmi"]) == ["likelihood", "pmi", "brevity"]


def test_the_engine_ranks_by_it_and_the_chat_shows_it(brevity, model_dirs):
    engine = Engine.load(*model_dirs)
    reply = engine.reply(["你好"], ReplySettings(candidates=4, max_len=8, seed=3, ranking="brevity"))
    assert all(c.scores["brevity"] == len(c.ids) for c in reply.candidates)
    assert reply.ranking == "brevity" and reply.chosen == choose(reply.candidates, "brevity")[0]
    shown: list[str] = []
    repl = Repl(Session(engine, ReplySettings(candidates=3, max_len=8, seed=1)), lambda text, kind: shown.append(text))
    repl.handle("/set ranking mmi+brevity")
    repl.handle("你好")
    repl.handle("/candidates")
    assert "ranked by mmi+brevity" in shown[-1] and "brevity" in shown[-1].splitlines()[1]
    assert "the reply's length in tokens" in shown[-1]  # its help


def test_the_api_lists_it_with_each_candidate(brevity, model_dirs):
    engine = Engine.load(*model_dirs)
    cfg = ServeConfig(settings=ReplySettings(candidates=3, max_len=6, ranking="mmi+brevity"), batch_window_ms=1)
    with TestClient(create_app(engine, cfg), base_url="http://localhost") as client:
        out = client.post("/generate", json={"text": "你好", "candidates": True}).json()
        assert out["ranking"] == "mmi+brevity"
        assert all(c["scores"]["brevity"] == float(len(engine.encode(c["text"]))) for c in out["candidates"])
        sid = client.post("/sessions").json()["id"]
        turn = client.post(f"/sessions/{sid}/messages", json={"text": "你好", "settings": {"ranking": "brevity"}}).json()
        assert turn["ranking"] == "brevity" and all("brevity" in c["scores"] for c in turn["candidates"])


def test_eval_reports_it(brevity, model_dirs, tmp_path):
    data = tmp_path / "d.jsonl"
    dialogues = [["你好", "你好呀", "今天过得怎么样"], ["晚饭吃什么", "吃面条吧"], ["周末去爬山吗", "好啊,几点出发"],
                 ["下雨了", "带伞了吗"]]
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues), encoding="utf-8")
    assert main(["eval", "--model", str(model_dirs[0]), "--mmi-model", str(model_dirs[1]), "--data", str(data),
                 "--output", str(tmp_path / "out"), "--negatives", "2", "--candidates", "2", "--max-len", "5",
                 "--no-progress"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert "brevity" in report["coherence"]["systems"]["dialogue"]
    assert "the reply's length in tokens" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
