"""Fixtures of the `chitchat train` tests: a small synthetic dataset, made once per test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from train_helpers import make_dataset, synthetic_dialogues


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), "synthetic", synthetic_dialogues(240))
