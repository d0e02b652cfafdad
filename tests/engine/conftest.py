"""Fixtures of the engine tests: random-weight `tiny` dialogue and MMI models in memory, an Engine over them."""

from __future__ import annotations

import pytest

from chitchat.engine.engine import Engine
from chitchat.model.gpt2 import build_model


@pytest.fixture(scope="module")
def models(tokenizer):
    return build_model(tokenizer, "tiny", seed=1).eval(), build_model(tokenizer, "tiny", seed=2).eval()


@pytest.fixture()
def engine(tokenizer, models):
    return Engine(models[0], tokenizer, models[1])
