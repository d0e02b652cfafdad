"""Fixtures shared by the test folders (each folder mirrors a subpackage of chitchat/)."""

from __future__ import annotations

import pytest

from chitchat.model.gpt2 import build_model, save_model
from chitchat.tokens.tokenizer import DEFAULT_VOCAB, load_tokenizer


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """A random-weight `tiny` dialogue model and MMI model, saved: (dialogue dir, MMI dir)."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = load_tokenizer(DEFAULT_VOCAB)
    save_model(build_model(tokenizer, "tiny", seed=1), tokenizer, root / "dialogue")
    save_model(build_model(tokenizer, "tiny", seed=2), tokenizer, root / "mmi")
    return root / "dialogue", root / "mmi"


@pytest.fixture(scope="session")
def tokenizer():
    """The project's tokenizer over vocab/vocab.txt."""
    return load_tokenizer(DEFAULT_VOCAB)
