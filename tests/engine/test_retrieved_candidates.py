"""Candidates from both sources (issue 24): the response index's replies beside the sampled ones, each
marked with its source, counted by the `retrieved` setting everywhere settings live; 0 retrieved is
today's behaviour; a model with no index samples only; the learned selector as a scoring."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from chitchat.cli import build_parser, main
from chitchat.engine.engine import Engine
from chitchat.engine.selector import Selector
from chitchat.engine.settings import ReplySettings
from chitchat.errors import ChitchatError

ROOT = Path(__file__).resolve().parents[2]
CORPORA = [str(ROOT / "corpus" / name) for name in ("chitchat.txt", "dialogues.jsonl", "chatterbot.yml")]


@pytest.fixture(scope="module")
def indexed(model_dirs, tmp_path_factory):
    """The tiny models with an index beside them (built by `chitchat index`, a dialogue in 3 held out)."""
    out = tmp_path_factory.mktemp("indexed") / "index"
    assert main(["index", *CORPORA, "--output", str(out), "--model", str(model_dirs[0]), "--holdout-every", "3"]) == 0
    return out


def test_retrieved_candidates_join_the_sampled_ones(model_dirs, indexed):
    engine = Engine.load(*model_dirs, index_dir=indexed)
    history = ["你好", "你好,最近怎么样"]
    plain = engine.reply(history, ReplySettings(candidates=3, retrieved=0, max_len=8, seed=2))
    assert [c.source for c in plain.candidates] == ["sampled"] * 3  # 0 retrieved: as before
    both = engine.reply(history, ReplySettings(candidates=3, retrieved=4, max_len=8, seed=2))
    sources = [c.source for c in both.candidates]
    assert sources[:3] == ["sampled"] * 3 and 1 <= sources.count("retrieved") <= 4
    assert [c.text for c in both.candidates[:3]] == [c.text for c in plain.candidates]  # sampling unchanged
    assert all("mmi" in c.scores for c in both.candidates)  # what the ranking needs, whatever the source
    assert all(c.retrieval is not None for c in both.candidates if c.source == "retrieved")
    again = engine.reply(history, ReplySettings(candidates=3, retrieved=4, max_len=8, seed=2))
    assert (again.text, again.chosen) == (both.text, both.chosen)  # same seed, same reply
    only = engine.reply(history, ReplySettings(candidates=0, retrieved=2, max_len=8))
    assert {c.source for c in only.candidates} == {"retrieved"} and only.text


def test_no_index_samples_only_and_says_so(model_dirs):
    engine = Engine.load(*model_dirs)
    reply = engine.reply(["你好"], ReplySettings(candidates=2, retrieved=5, max_len=6, seed=1))
    assert [c.source for c in reply.candidates] == ["sampled"] * 2
    with pytest.raises(ChitchatError, match="no response index"):
        engine.reply(["你好"], ReplySettings(candidates=0, retrieved=5, max_len=6, seed=1))
    err = io.StringIO()
    args = build_parser().parse_args(["chat", "--model", str(model_dirs[0]), "--retrieved", "3", "--max-len", "6"])
    from chitchat.commands.chat import run
    import contextlib
    with contextlib.redirect_stderr(err):
        assert run(args, stdin=io.StringIO("你好\n"), stdout=io.StringIO()) == 0
    assert "no response index for this model" in err.getvalue()


def test_an_index_of_another_tokenizer_is_refused(model_dirs, indexed, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(indexed, other)
    meta = json.loads((other / "meta.json").read_text(encoding="utf-8"))
    (other / "meta.json").write_text(json.dumps({**meta, "tokenizer": "0123456789abcdef"}), encoding="utf-8")
    with pytest.raises(ChitchatError, match="tokenizer") as e:
        Engine.load(*model_dirs, index_dir=other)
    assert "\n" not in str(e.value) and "meta.json" in str(e.value)


def test_the_selector_is_trained_by_one_command_and_ranks(model_dirs, indexed, tmp_path):
    out = tmp_path / "selector.json"
    assert main(["selector", str(indexed / "holdout.jsonl"), "--model", str(model_dirs[0]), "--mmi-model",
                 str(model_dirs[1]), "--index", str(indexed), "--contexts", "12", "--sampled-negatives", "2",
                 "--max-history-len", "3", "--output", str(out)]) == 0
    spec = json.loads(out.read_text(encoding="utf-8"))
    assert spec["kind"] == "chitchat selector" and len(spec["coef"]) == len(spec["features"])
    engine = Engine.load(*model_dirs, index_dir=indexed, selector=out)
    reply = engine.reply(["你好", "你好啊"], ReplySettings(candidates=3, retrieved=3, max_len=8, seed=1,
                                                      ranking="selector"))
    assert reply.ranking == "selector" and all("selector" in c.scores for c in reply.candidates if not c.empty)
    assert Engine.load(*model_dirs).ranking_for("selector") != engine.ranking_for("selector")  # no selector: left out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**spec, "coef": spec["coef"][:-1]}), encoding="utf-8")
    with pytest.raises(ChitchatError, match="bad.json"):
        Selector.load(bad)
    with pytest.raises(ChitchatError, match="no such selector"):
        Selector.load(tmp_path / "missing.json")
