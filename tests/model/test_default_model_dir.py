"""Where the default model is looked up (chitchat.model.default), and what a missing one says: one line
naming the commands that get it; nothing is restored, downloaded or trained, and git is never run."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import chitchat.model.default as dm
from chitchat.errors import ChitchatError


def _model(root: Path) -> Path:
    for name in ("dialogue", "mmi"):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}", encoding="utf-8")
    return root


def test_a_missing_checkout_model_is_one_line_naming_git_checkout_and_nothing_is_restored(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout" / "models" / "default"
    (checkout / "dialogue").mkdir(parents=True)  # half there: a local edit git would discard
    (checkout / "dialogue" / "mine.txt").write_text("local edit", encoding="utf-8")
    monkeypatch.setattr(dm, "CHECKOUT_MODEL", checkout)
    with pytest.raises(ChitchatError) as e:
        dm.ensure_default_model(say=pytest.fail, root=checkout)
    message = str(e.value)
    assert "\n" not in message and "`git checkout HEAD -- models/default`" in message and str(checkout) in message
    assert "--model DIR" in message and "CHITCHAT_DEFAULT_MODEL" in message and "chitchat default-model" in message
    assert sorted(p.name for p in checkout.rglob("*")) == ["dialogue", "mine.txt"]


def test_library_code_runs_no_git():
    source = inspect.getsource(dm)
    assert "subprocess" not in source and "shutil.which" not in source


def test_the_default_model_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("CHITCHAT_DEFAULT_MODEL", raising=False)
    assert dm.default_model_dir() == dm.CHECKOUT_MODEL  # the tests run in a checkout
    monkeypatch.setattr(dm, "REPO_ROOT", tmp_path / "site-packages")  # an installed package: no pyproject.toml
    monkeypatch.setenv("CHITCHAT_HOME", str(tmp_path / "home"))
    assert dm.default_model_dir() == tmp_path / "home" / "models" / "default"
    monkeypatch.setenv("CHITCHAT_DEFAULT_MODEL", str(tmp_path / "mine"))
    assert dm.default_model_dir() == tmp_path / "mine"
    root = _model(tmp_path / "mine")
    assert dm.ensure_default_model() == (str(root / "dialogue"), str(root / "mmi"))
