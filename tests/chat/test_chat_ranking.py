"""The chat's candidate ranking: `/set ranking`, the --ranking flag, what the transcript records."""

from __future__ import annotations

import io
import json

import pytest

from chitchat.commands.chat import run
from chitchat.chat.session import Session
from chitchat.cli import build_parser
from chitchat.engine.engine import Engine
from chitchat.engine.ranking import DEFAULT_RANKING
from chitchat.engine.settings import ReplySettings
from chitchat.errors import ChitchatError


def test_set_ranking_changes_how_the_next_reply_is_chosen(engine):
    session = Session(engine, ReplySettings(max_len=6, candidates=3, seed=3))
    assert session.settings.ranking == DEFAULT_RANKING
    assert session.set("ranking", "MMI + 0.5*pmi") == "ranking mmi+0.5*pmi"
    turn = session.respond("你好")
    assert turn.ranking == "mmi+0.5*pmi" and turn.settings["ranking"] == "mmi+0.5*pmi"
    assert all({"mmi", "pmi"} <= set(c.scores) for c in turn.candidates)
    assert session.records[-1]["candidates"][0]["scores"]["pmi"] is not None
    assert session.set("rank", "pmi") == "ranking pmi"
    assert session.respond("今天好累啊").ranking == "pmi"


def test_set_ranking_rejects_bad_values_and_says_when_mmi_is_unavailable(engine, model_dirs):
    session = Session(engine)
    for bad in ("bleu", "mmi+", "0*pmi", "mmi+mmi"):
        with pytest.raises(ChitchatError):
            session.set("ranking", bad)
    assert session.settings.ranking == DEFAULT_RANKING
    assert session.set("mmi", "off") == "ranking likelihood"  # MMI off is a ranking
    assert session.set("mmi", "on").startswith(f"ranking {DEFAULT_RANKING}")  # with no index: ranked by mmi
    no_mmi = Session(Engine.load(model_dirs[0]))
    assert no_mmi.set("ranking", "mmi+pmi") == \
        "ranking mmi+pmi, but this model cannot compute all of it: candidates are ranked by pmi"


def test_ranking_flag_reaches_the_transcript(model_dirs, tmp_path):
    transcript = tmp_path / "t.jsonl"
    argv = ["chat", "--model", str(model_dirs[0]), "--mmi-model", str(model_dirs[1]), "--max-len", "6",
            "--ranking", "pmi", "--transcript", str(transcript)]
    assert run(build_parser().parse_args(argv), stdin=io.StringIO("你好\n"), stdout=io.StringIO()) == 0
    record = json.loads(transcript.read_text(encoding="utf-8").splitlines()[0])
    assert record["ranking"] == "pmi" and record["settings"]["ranking"] == "pmi"
    with pytest.raises(ChitchatError, match="unknown scoring"):
        run(build_parser().parse_args(argv[:-4] + ["--ranking", "bleu"]), stdin=io.StringIO(""), stdout=io.StringIO())
