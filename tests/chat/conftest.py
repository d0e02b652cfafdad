"""Fixtures of the chat tests: an Engine over the tiny saved models, a user data directory of each test's own."""

from __future__ import annotations

import pytest

from chitchat.engine.engine import Engine


@pytest.fixture(scope="module")
def engine(model_dirs):
    return Engine.load(*model_dirs)


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    """Transcripts and input history go to the test's own directory, never the user's."""
    monkeypatch.setenv("CHITCHAT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
