"""Fixtures of the `chitchat serve` tests: the engine on the tiny models, and a test client."""

from __future__ import annotations

import pytest

from chitchat.engine.engine import Engine

from serve_helpers import serve


@pytest.fixture(scope="module")
def engine(model_dirs):
    return Engine.load(*model_dirs)


@pytest.fixture()
def client(engine):
    with serve(engine) as c:
        yield c
