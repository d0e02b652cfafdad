"""The reply settings are declared once (chitchat.engine.settings.ReplySettings) and checked by one
function: the same out-of-range value gets the same message from the command line, the chat's /set,
and both HTTP APIs; the surfaces' names, flags and schemas come from the declaration."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient

from chitchat.chat.session import Session
from chitchat.cli import build_parser, main
from chitchat.engine.engine import Engine
from chitchat.engine.settings import ReplySettings, describe, generation_config, setting_names
from chitchat.errors import ChitchatError
from chitchat.serve.app import create_app
from chitchat.serve.config import ServeConfig

# (setting, the value as typed, the value as JSON, the one message)
BAD = [
    ("temperature", "-1", -1, "temperature -1.0 must be in [0, 100]"),
    ("top_p", "1.5", 1.5, "top_p 1.5 must be in [0, 1]"),
    ("top_k", "-3", -3, "top_k -3 must be in [0, 100000]"),
    ("repetition_penalty", "0.5", 0.5, "repetition_penalty 0.5 must be in [1, inf]"),
    ("max_history_len", "0", 0, "max_history_len 0 must be in [1, 1000]"),
    ("ranking", "bleu", "bleu", "ranking 'bleu': unknown scoring 'bleu' (scorings: likelihood, mmi, pmi, retrieval, selector)"),
]


@pytest.fixture(scope="module")
def engine(model_dirs):
    return Engine.load(*model_dirs)


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, ServeConfig(settings=ReplySettings(max_len=6, candidates=2), batch_window_ms=1)),
                    base_url="http://localhost") as c:
        yield c


@pytest.mark.parametrize("name, typed, value, message", BAD, ids=[b[0] for b in BAD])
def test_the_same_bad_value_gets_the_same_message_everywhere(name, typed, value, message, engine, client, model_dirs,
                                                             capsys):
    flag = "--" + name.replace("_", "-")
    argv = ["chat", "--model", str(model_dirs[0]), flag, typed]
    assert main(argv) == 2
    cli = capsys.readouterr().err.strip()
    assert cli == f"chitchat chat: error: {message}"
    with pytest.raises(ChitchatError) as e:
        Session(engine).set(name, typed)
    assert str(e.value) == message  # /set
    sid = client.post("/sessions").json()["id"]
    r = client.post(f"/sessions/{sid}/messages", json={"text": "你好", "settings": {name: value}})
    assert r.status_code == 422 and r.json()["error"] == {"message": message, "type": "invalid_request_error",
                                                          "param": f"settings.{name}"}
    if name in ("temperature", "top_p"):  # the settings an OpenAI request carries under their own names
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "你好"}], name: value})
        assert r.status_code == 422 and r.json()["error"]["message"] == message and r.json()["error"]["param"] == name
    assert main(["eval", "--model", str(model_dirs[0]), "--data", "corpus/chitchat.txt", "-o", "/nonexistent",
                 flag, typed]) == 2
    assert capsys.readouterr().err.strip() == f"chitchat eval: error: {message}"


def test_every_surface_takes_every_setting_by_its_declared_names(client):
    names = setting_names()
    for d in describe():
        assert names[d["name"]] == d["name"] and all(names[n] == d["name"] for n in d["names"])
    flags = {a.dest: a.option_strings for a in build_parser("chat")._subparsers._group_actions[0].choices["chat"]._actions}
    for d in describe():
        assert "--" + d["name"].replace("_", "-") in flags[d["name"]]  # the primary flag is the field's name
    assert "--topk" in flags["top_k"] and "--top-k" in flags["top_k"]  # the old spelling stays
    schema = client.get("/openapi.json").json()["components"]["schemas"]["TurnSettings"]["properties"]
    assert {d["name"] for d in describe()} - {"seed"} <= set(schema)
    assert schema["temperature"]["maximum"] == 100 and schema["top_p"]["maximum"] == 1  # ranges as declared


def test_generation_config_is_the_settings(tmp_path, tokenizer):
    """A saved model's generation_config.json samples as the chat does (the trainer passes it), the
    shipped model's too, and transformers reads it."""
    from transformers import GenerationConfig

    from chitchat.files import REPO_ROOT
    from chitchat.model.gpt2 import build_model, save_model

    save_model(build_model(tokenizer, "tiny", seed=1), tokenizer, tmp_path / "m", generation_config())
    for path in (tmp_path / "m", REPO_ROOT / "models" / "default" / "dialogue"):
        saved = json.loads((path / "generation_config.json").read_text(encoding="utf-8"))
        assert {k: saved[k] for k in generation_config()} == generation_config()
        assert GenerationConfig.from_pretrained(path).max_new_tokens == ReplySettings().max_len
    greedy = generation_config(ReplySettings(temperature=0))
    assert greedy["do_sample"] is False


def test_set_help_lists_every_setting(engine):
    from chitchat.chat.repl import Repl

    shown: list[str] = []
    Repl(Session(engine), lambda text, kind: shown.append(text)).handle("/help")
    for d in describe():
        assert d["name"] in shown[0]


def test_scripted_chat_runs_with_settings(model_dirs):
    from chitchat.commands.chat import run

    out = io.StringIO()
    argv = ["chat", "--model", str(model_dirs[0]), "--top-k", "3", "--temperature", "0", "--max-len", "5"]
    assert run(build_parser().parse_args(argv), stdin=io.StringIO("你好\n"), stdout=out) == 0
    assert out.getvalue().strip()
