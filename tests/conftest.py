"""Fixtures shared by the test folders (each folder mirrors a subpackage of chitchat/)."""

from __future__ import annotations

import inspect
import re

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


# -- markers (registered in pyproject.toml, --strict-markers) ------------------------------------
# `pytest -m "not slow"` is the fast inner loop; `make test` runs everything. Marks are given here by
# test name (not in each file) so that a test keeps its mark when it moves to another file.

# Tests that take more than a few seconds each (a training run, a child process that loads torch, a
# sweep over the shared corpora), by function name (every parameter case included).
SLOW_TESTS = frozenset({
    "test_sixty_seconds_on_lccc_toy_beats_the_unigram_perplexity",
    "test_autotokenizer_ids_equal_the_projects_on_every_shared_utterance",
    "test_two_process_ddp_matches_one_process_over_the_same_global_batches",
    "test_training_reduces_valid_loss_and_writes_a_loadable_run",
    "test_ctrl_c_saves_the_last_completed_step_plots_and_exits_130",
    "test_kill_during_a_save_leaves_a_loadable_checkpoint",
    "test_resume_lands_on_the_same_step_and_weights_as_an_uninterrupted_run",
    "test_int8_perplexity_within_2_percent_of_fp32",
    "test_pipeline_text_generation_on_a_saved_model_returns_chinese",
    "test_saved_tokenizer_loads_with_autotokenizer_alone",
    "test_cli_pair_and_column_options",
    "test_interact_py_is_chitchat_chat",
    "test_terminal_mode_long_line_emoji_empty_line_and_every_command",
    "test_shipped_model_keeps_its_validation_perplexity",
    "test_a_client_leaving_mid_stream_frees_its_place",
    "test_the_serve_command",
    "test_openapi_fuzz_finds_no_server_error",
    "test_serve_command_errors_are_one_line",
    "test_idle_slow_and_surplus_connections_are_closed",
    "test_session_ids_never_reach_the_access_log",
    "test_the_serve_command_refuses_such_a_key_in_one_line",
})

# A test (or one of its fixtures) that reads the real corpora beside the project (../shared/corpora):
# it calls support.shared_corpora() or builds a path from SHARED or LCCC.
_READS_SHARED = re.compile(r"\bshared_corpora\(\)|\bSHARED\s*/|\bLCCC\s*/")


def _source(func) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def _reads_shared_corpora(item) -> bool:
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)  # the fixtures the test requests, transitively
    if info is not None:
        funcs += [d.func for defs in info.name2fixturedefs.values() for d in defs]
    return any(f is not None and _READS_SHARED.search(_source(f)) for f in funcs)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if getattr(item, "originalname", item.name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if item.path.name == "test_web.py":  # the chat page in a real Chromium
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)
        if _reads_shared_corpora(item):
            item.add_marker(pytest.mark.shared_corpora)
