"""The default model's recipe (chitchat/recipe/), run end to end on tiny sources in seconds, and the chat
on the model it builds."""

from __future__ import annotations

import io
import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from chitchat.cli import build_parser
from chitchat.errors import ChitchatError
from chitchat.recipe.corpora import Corpus
from chitchat.recipe.recipe import MANIFEST, RecipeConfig, StageConfig, model_files, run_recipe

ROOT = Path(__file__).resolve().parents[2]


def tiny_recipe(tmp: Path) -> RecipeConfig:
    src = lambda name: Corpus(name, f"this repository, corpus/{name}", "MIT")  # noqa: E731
    return RecipeConfig(
        output=tmp / "default", work=tmp / "work", corpora=ROOT / "corpus",
        pretrain_sources=(src("chitchat.txt"), src("kdconv_style.json")),
        chitchat_sources=(src("dialogues.jsonl"), src("pairs.tsv"), src("chatterbot.yml")),
        valid_source=src("lccc_style.json"), vocab_size=3000, max_len=64, preset="tiny",
        pretrain=StageConfig(steps=3, lr=1e-3, eval_every=2), dialogue=StageConfig(steps=2, lr=1e-3),
        mmi=StageConfig(steps=2, lr=1e-3), threads=1, progress=False,
        eval_negatives=2,  # the validation file holds 4 dialogues
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    cfg = tiny_recipe(tmp)
    messages: list[str] = []
    manifest = run_recipe(cfg, say=messages.append)
    return cfg, manifest, messages


def test_recipe_builds_a_complete_model(built):
    cfg, manifest, messages = built
    out = cfg.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", MANIFEST, "dialogue", "mmi"]
    # each stage is a chitchat command, printed as it runs
    commands = [m for m in messages if m.startswith("$ chitchat ")]
    assert [c.split()[2] for c in commands] == ["vocab", "preprocess", "preprocess", "preprocess", "train", "train",
                                                 "train", "eval"]
    assert any("--init-from" in c and "--mmi" in c for c in commands)
    for c in commands:  # each is a command line of its own, to rerun the stage by hand
        argv = shlex.split(c)[2:]
        assert build_parser(argv[0]).parse_args(argv).command == argv[0]
    # the manifest: sources with hashes, stages with steps and tokens, validation figures, file hashes
    on_disk = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["sources"]["pretrain"][0]["files"]["chitchat.txt"] == __import__("hashlib").sha256(
        (ROOT / "corpus" / "chitchat.txt").read_bytes()).hexdigest()
    assert [on_disk["stages"][s]["steps"] for s in ("pretrain", "dialogue", "mmi")] == [3, 2, 2]
    assert all(s["tokens_seen"] > 0 and s["useful_tokens_per_s"] > 0 for s in on_disk["stages"].values())
    assert on_disk["stages"]["mmi"]["mmi"] and on_disk["stages"]["mmi"]["init_from"] == "pretrain"
    v = on_disk["validation"]
    assert v["perplexity_char"] > 1 and v["cases"] > 0 and 0 <= v["mmi_ranking"]["empty_rate"] <= 1
    assert on_disk["files"] == model_files(out) and "dialogue/model.safetensors" in on_disk["files"]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlanguage: zh") and "## Limitations" in card and "lccc_style.json" in card


def test_a_rewritten_card_keeps_the_hand_written_notes(built, tmp_path):
    from chitchat.recipe.card import NOTES_MARK, model_card, write_card

    _, manifest, _ = built
    card = tmp_path / "README.md"
    write_card(card, manifest)
    assert card.read_text(encoding="utf-8") == model_card(manifest)  # no notes yet: the card alone
    card.write_text("an old card\n" + NOTES_MARK + "\n\n## A conversation\nnotes\n", encoding="utf-8")
    write_card(card, manifest)
    text = card.read_text(encoding="utf-8")
    assert text.startswith(model_card(manifest)) and "an old card" not in text
    assert text.endswith(NOTES_MARK + "\n\n## A conversation\nnotes\n")
    assert NOTES_MARK in (ROOT / "models" / "default" / "README.md").read_text(encoding="utf-8")


def test_exported_weights_are_fp16_and_load_as_fp32(built):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, _, _ = built
    with safe_open(str(cfg.output / "dialogue" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    from chitchat.model.gpt2 import load_model

    model, _ = load_model(cfg.output / "dialogue")
    assert next(model.parameters()).dtype == torch.float32
    # and without this package
    AutoModelForCausalLM.from_pretrained(str(cfg.output / "mmi"))
    assert AutoTokenizer.from_pretrained(str(cfg.output / "dialogue"))("你好")["input_ids"]


def test_a_rerun_skips_finished_stages_and_keeps_the_model(built):
    cfg, manifest, _ = built
    messages: list[str] = []
    again = run_recipe(cfg, say=messages.append)
    assert not any(m.startswith("$ chitchat ") for m in messages)
    assert sum("skipped" in m for m in messages) == 9
    assert again["files"] == manifest["files"]


def test_a_stopped_training_stage_resumes(built, tmp_path):
    cfg, manifest, _ = built
    # a copy whose dialogue stage stopped before finishing: the rerun resumes it (--resume) and redoes the rest
    import shutil

    work = tmp_path / "work"
    shutil.copytree(cfg.work, work)
    stages = json.loads((work / "stages.json").read_text(encoding="utf-8"))
    for name in ("dialogue", "mmi", "export", "eval"):
        stages.pop(name)
    (work / "stages.json").write_text(json.dumps(stages), encoding="utf-8")
    (work / "runs" / "dialogue" / "summary.json").unlink()
    messages: list[str] = []
    again = run_recipe(replace(cfg, work=work, output=tmp_path / "default"), say=messages.append)
    trains = [m for m in messages if m.startswith("$ chitchat train")]
    assert len(trains) == 1 and "--resume" in trains[0] and "runs/dialogue" in trains[0]
    assert again["stages"]["dialogue"]["steps"] == 2
    assert again["files"] == manifest["files"]  # the same weights: seeded and deterministic on a CPU


def test_a_missing_corpus_is_one_line_naming_it_and_its_origin(tmp_path):
    cfg = replace(tiny_recipe(tmp_path), corpora=tmp_path / "nowhere")
    with pytest.raises(ChitchatError) as e:
        run_recipe(cfg, say=lambda _: None)
    message = str(e.value)
    assert "\n" not in message and "nowhere/chitchat.txt" in message and "corpus/chitchat.txt" in message
    assert not (tmp_path / "default").exists()


def test_a_missing_default_model_outside_a_checkout_is_one_line_saying_how_to_get_it(built, tmp_path, monkeypatch):
    """Never an implicit multi-hour training: an error naming `git checkout` and the recipe; a built model is used."""
    from chitchat.commands.chat import run
    from chitchat.model.default import ensure_default_model

    cfg, manifest, _ = built
    messages: list[str] = []
    with pytest.raises(ChitchatError) as e:
        ensure_default_model(say=messages.append, root=tmp_path / "nowhere")
    assert "\n" not in str(e.value) and "git checkout" in str(e.value) and "chitchat default-model" in str(e.value)
    assert not (tmp_path / "nowhere").exists() and messages == []
    root = cfg.output
    dialogue, mmi = ensure_default_model(say=messages.append, root=root)
    assert (dialogue, mmi) == (str(root / "dialogue"), str(root / "mmi")) and messages == []

    monkeypatch.setenv("CHITCHAT_DEFAULT_MODEL", str(root))
    monkeypatch.setenv("CHITCHAT_HOME", str(tmp_path / "home"))
    out = io.StringIO()
    assert run(build_parser().parse_args(["chat", "--seed", "0", "--max-len", "6"]), stdin=io.StringIO("你好\n"),
               stdout=out) == 0
    assert len(out.getvalue().splitlines()) == 1 and out.getvalue().strip()
    [transcript] = (tmp_path / "home" / "transcripts").glob("*.jsonl")
    record = json.loads(transcript.read_text(encoding="utf-8"))
    assert record["model"] == str(root / "dialogue") and record["mmi_model"] == str(root / "mmi")


def test_until_preprocess_prepares_the_datasets_alone(tmp_path):
    cfg = tiny_recipe(tmp_path)
    assert run_recipe(cfg, say=lambda _: None, until="preprocess") is None
    assert {p.name for p in (cfg.work / "data").iterdir()} == {"pretrain", "chitchat", "valid"}
    assert not (cfg.work / "runs").exists() and not cfg.output.exists()
    with pytest.raises(ChitchatError, match="unknown stage"):
        run_recipe(cfg, say=lambda _: None, until="nonsense")


def test_training_on_prepared_data_needs_no_corpora_and_records_its_machine(built, tmp_path):
    """What runs on another machine (a GPU): the training stages on a copy of the prepared work folder."""
    import shutil

    cfg, manifest, _ = built
    work = tmp_path / "work"
    shutil.copytree(cfg.work, work)
    log = json.loads((work / "stages.json").read_text(encoding="utf-8"))
    (work / "stages.json").write_text(json.dumps({k: v for k, v in log.items() if not k.startswith(("mmi", "export", "eval"))}),
                                      encoding="utf-8")
    shutil.rmtree(work / "runs" / "mmi")
    moved = replace(cfg, work=work, corpora=tmp_path / "nowhere", output=tmp_path / "out")
    messages: list[str] = []
    assert run_recipe(moved, say=messages.append, until="train") is None
    assert any(m.startswith("$ chitchat train") and "--mmi" in m for m in messages)
    assert json.loads((work / "runs" / "mmi" / "machine.json").read_text(encoding="utf-8"))["cpus"] >= 1
    assert not moved.output.exists()
    assert manifest["stages"]["pretrain"]["machine"]["cpus"] >= 1  # each stage's machine is in TRAINED_ON.json


def test_a_command_imports_only_its_own_module():
    import subprocess
    import sys

    code = ("import sys; from chitchat.cli import build_parser; build_parser('train'); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'prompt_toolkit', 'jieba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
