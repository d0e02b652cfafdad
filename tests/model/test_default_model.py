"""The shipped default model (models/default): it loads without this package, its files are the
ones TRAINED_ON.json records, and its per-character perplexity on a fixed slice of CPED validation
dialogues stays within 2% of the recorded figure (teacher-forced: no sampling, a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chitchat.recipe.recipe import MANIFEST, model_files

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "default"
SHARED = ROOT.parent / "shared" / "corpora"


@pytest.fixture(scope="module")
def manifest() -> dict:
    assert (MODEL / MANIFEST).is_file(), f"the repository ships {MODEL}; rebuild it with `make default-model`"
    return json.loads((MODEL / MANIFEST).read_text(encoding="utf-8"))


def test_shipped_files_match_their_recorded_hashes(manifest):
    assert model_files(MODEL) == manifest["files"]
    assert {"dialogue/model.safetensors", "mmi/model.safetensors", "dialogue/tokenizer.json"} <= set(manifest["files"])
    size = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert size <= 64 * 2 ** 20


def test_shipped_model_loads_without_this_package(manifest):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("dialogue", "mmi"):
        model = AutoModelForCausalLM.from_pretrained(str(MODEL / name))
        assert model.config.n_layer == manifest["model"]["n_layer"]
        tok = AutoTokenizer.from_pretrained(str(MODEL / name))
        assert tok.unk_token_id not in tok("你好,今天天气不错")["input_ids"]


def test_shipped_model_keeps_its_validation_perplexity(manifest):
    from chitchat.eval.evaluate import char_perplexity

    guard = manifest["guard"]
    data = SHARED / guard["data"]
    if not data.is_file():
        pytest.skip(f"{data} is absent")
    ppl, cases = char_perplexity(MODEL / "dialogue", [str(data)], limit=guard["cases"])
    assert cases == guard["cases"]
    assert abs(ppl / guard["perplexity_char"] - 1) <= 0.02, (ppl, guard["perplexity_char"])


def test_recorded_validation_figures_meet_the_targets(manifest):
    """The full evaluation the recipe recorded (all of CPED valid, seed 1; the guard above ties the
    weights to it): per-character perplexity <= 90, MMI-ranked replies never empty and repeating a
    3-gram in at most 5% of cases."""
    v = manifest["validation"]
    assert v["data"] == "open/cped_valid.jsonl" and v["cases"] >= 1600 and v["seed"] == 1
    assert v["perplexity_char"] <= 90
    assert v["mmi_ranking"]["repeat_3gram_rate"] <= 0.05 and v["mmi_ranking"]["empty_rate"] == 0
