"""The default model bootstrap: trained once (here for a few seconds), then reused; chat uses it."""

from __future__ import annotations

import io
import json

from chitchat.chat import run
from chitchat.cli import build_parser
from chitchat.default_model import MANIFEST, ensure_default_model


def test_default_model_is_trained_once_then_reused(tmp_path, monkeypatch):
    root = tmp_path / "default"
    messages: list[str] = []
    dialogue, mmi = ensure_default_model(say=messages.append, progress=False, seconds={"dialogue": 2, "mmi": 2},
                                         root=root)
    assert (root / "dialogue" / "config.json").is_file() and (root / "mmi" / "config.json").is_file()
    assert (dialogue, mmi) == (str(root / "dialogue"), str(root / "mmi"))
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["trained_on"][0] == "chatterbot:chinese" and manifest["preset"] == "tiny"
    assert any("training the MMI model" in m for m in messages)
    assert sorted(p.name for p in root.iterdir()) == sorted(["dialogue", "mmi", MANIFEST])  # no leftovers
    assert not list(tmp_path.glob(".default.building-*"))

    messages.clear()
    assert ensure_default_model(say=messages.append, root=root) == (dialogue, mmi) and messages == []

    monkeypatch.setenv("CHITCHAT_DEFAULT_MODEL", str(root))
    monkeypatch.setenv("CHITCHAT_HOME", str(tmp_path / "home"))
    out = io.StringIO()
    assert run(build_parser().parse_args(["chat", "--seed", "0", "--max-len", "6"]), stdin=io.StringIO("你好\n"), stdout=out) == 0
    assert len(out.getvalue().splitlines()) == 1 and out.getvalue().strip()
    [transcript] = (tmp_path / "home" / "transcripts").glob("*.jsonl")
    record = json.loads(transcript.read_text(encoding="utf-8"))
    assert record["model"] == str(root / "dialogue") and record["mmi_model"] == str(root / "mmi")
