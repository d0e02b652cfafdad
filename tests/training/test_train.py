"""`chitchat train` in this process: batching, loss, schedule, checkpoint directories, training runs,
resume, the time budget and vocabulary extension. Tiny preset, one CPU thread. Interrupted runs, DDP,
bad input and the quality bar on real data: test_train_processes.py."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from train_helpers import PAIRS, config, make_dataset, metrics, state_dict, synthetic_dialogues


# ---------------------------------------------------------------- batching, loss, schedule

def test_plan_batches_covers_every_window_once_within_budget_and_little_padding():
    from chitchat.training.batching import epoch_rng, padding_stats, plan_batches

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(3.8, 0.7, 5000).astype(np.int64), 4, 256)  # LCCC-like spread
    batches = plan_batches(lengths, 2048, None, epoch_rng(1, 0))
    seen = np.sort(np.concatenate(batches))
    assert np.array_equal(seen, np.arange(len(lengths)))
    assert all(len(b) * lengths[b].max() <= 2048 for b in batches)
    useful, computed = padding_stats(batches, lengths)
    assert 1 - useful / computed < 0.05
    again = plan_batches(lengths, 2048, None, epoch_rng(1, 0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = plan_batches(lengths, 2048, None, epoch_rng(1, 1))
    assert not all(len(a) == len(b) and np.array_equal(a, b) for a, b in zip(batches, other))
    capped = plan_batches(lengths, 100_000, 8, epoch_rng(1, 0))
    assert max(len(b) for b in capped) == 8


def test_collate_right_pads_and_labels_only_real_next_tokens():
    from chitchat.training.batching import IGNORE, collate

    b = collate([np.array([2, 10, 11, 3]), np.array([2, 12, 3])], pad_id=0)
    assert b.input_ids.tolist() == [[2, 10, 11, 3], [2, 12, 3, 0]]
    assert b.labels.tolist() == [[10, 11, 3, IGNORE], [12, 3, IGNORE, IGNORE]]
    assert (b.tokens, b.targets, b.sq_lengths) == (7, 5, 25)
    mapped = collate([np.array([2, 3])], pad_id=0, id_map=np.array([0, 1, 5, 6]))
    assert mapped.input_ids.tolist() == [[5, 6]]


def test_group_steps_pads_the_last_step_with_empty_slots():
    from chitchat.training.batching import group_steps

    assert group_steps(5, 2) == [[0, 1], [2, 3], [4, None]]
    assert group_steps(4, 4) == [[0, 1, 2, 3]]


def test_fused_loss_equals_transformers_loss_and_gradients(dataset):
    import torch

    from chitchat.training.batching import collate
    from chitchat.tokens.dataset import load_dataset
    from chitchat.model.gpt2 import build_model
    from chitchat.training.loss import CausalLMLoss

    ds = load_dataset(dataset, "train")
    tok = ds.tokenizer()
    b = collate([ds[i] for i in range(6)], tok.pad_token_id)
    ids, labels = torch.from_numpy(b.input_ids), torch.from_numpy(b.labels)
    model = build_model(tok, "tiny", seed=0)
    ours = CausalLMLoss(model)(ids, labels) / b.targets
    ours.backward()
    g_ours = model.transformer.h[0].attn.c_attn.weight.grad.clone(), model.transformer.wte.weight.grad.clone()
    model.zero_grad()
    mask = torch.from_numpy((b.input_ids != tok.pad_token_id) | (np.arange(b.input_ids.shape[1]) == 0)).long()
    hf_labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    ref = model(input_ids=ids, attention_mask=mask, labels=hf_labels).loss  # transformers shifts labels itself
    ref.backward()
    assert abs(ours.item() - ref.item()) < 1e-5
    assert torch.allclose(g_ours[0], model.transformer.h[0].attn.c_attn.weight.grad, atol=1e-6)
    assert torch.allclose(g_ours[1], model.transformer.wte.weight.grad, atol=1e-6)
    with torch.no_grad():
        assert abs(float(CausalLMLoss(model)(ids, labels)) / b.targets - float(ref)) < 1e-5


def test_lr_schedule_warms_up_then_decays_and_follows_the_time_budget():
    from chitchat.training.config import TrainConfig, lr_factor

    cfg = TrainConfig(data=Path("d"), output=Path("o"), warmup_steps=10)
    assert lr_factor(cfg, 0, 100) == pytest.approx(0.1)
    assert lr_factor(cfg, 9, 100) == pytest.approx(1.0)
    assert lr_factor(cfg, 55, 100) == pytest.approx(0.5)
    assert lr_factor(cfg, 99, 100) < 0.01
    lin = TrainConfig(data=Path("d"), output=Path("o"), warmup_steps=0, schedule="linear", min_lr_ratio=0.1)
    assert lr_factor(lin, 50, 100) == pytest.approx(0.55)
    auto = TrainConfig(data=Path("d"), output=Path("o"))  # warm-up: 5% of the steps
    assert lr_factor(auto, 0, 100) == pytest.approx(0.2) and lr_factor(auto, 4, 100) == pytest.approx(1.0)
    # a run of 10^6 planned steps with half its time budget spent is half-way through its decay
    assert lr_factor(auto, 2000, 10**6, time_fraction=0.5) == pytest.approx(0.5, abs=0.01)


def test_recover_dir_keeps_the_newest_complete_copy(tmp_path):
    from chitchat.training.checkpoint import commit_dir, new_partial_dir, recover_dir

    dest = tmp_path / "last"
    for step in (1, 2):
        tmp = new_partial_dir(dest)
        (tmp / "step").write_text(str(step))
        commit_dir(tmp, dest)
    assert (dest / "step").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # died between `last` -> .last.old and .last.new -> `last`: the new copy is complete
    (tmp_path / ".last.new").mkdir()
    (tmp_path / ".last.new" / "step").write_text("3")
    os.rename(dest, tmp_path / ".last.old")
    recover_dir(dest)
    assert (dest / "step").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # died while writing: the partial copy is discarded, `last` untouched
    partial = new_partial_dir(dest)
    (partial / "step").write_text("4")
    recover_dir(dest)
    assert (dest / "step").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["last"]


# ---------------------------------------------------------------- training runs

def test_training_reduces_valid_loss_and_writes_a_loadable_run(dataset, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chitchat.model.gpt2 import resolve_model_dir
    from chitchat.training.trainer import train

    out = tmp_path / "run"
    best = train(config(dataset, out, epochs=6, lr=3e-3, patience=None))
    assert best == out / "best" == resolve_model_dir(out)
    valid = metrics(out, "valid")
    assert len(valid) == 6  # one per epoch end
    assert valid[-1]["loss"] < valid[0]["loss"] - 1.0
    assert min(v["loss"] for v in valid) < math.log(8000) - 4  # untrained: ln(vocabulary) = 9.0
    assert metrics(out, "train")[-1]["loss"] < metrics(out, "train")[0]["loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "completed" and summary["step"] == valid[-1]["step"]
    assert summary["best_step"] == min(valid, key=lambda v: v["loss"])["step"]
    assert summary["padding_fraction"] < 0.10
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "training_info.json"):
        assert (best / name).is_file(), name
    assert {"training_state.json", "training_state.pt", "rng_state_0.pt"} <= {p.name for p in (out / "last").iterdir()}
    # Hugging Face alone loads and runs it
    tok = AutoTokenizer.from_pretrained(str(best))
    model = AutoModelForCausalLM.from_pretrained(str(best))
    gen = json.loads((best / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (
        tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    ids = torch.tensor([[tok.cls_token_id] + tok.encode("你好", add_special_tokens=False) + [tok.sep_token_id]])
    with torch.no_grad():
        nxt = model(input_ids=ids).logits[0, -1].argmax().item()
    assert tok.convert_ids_to_tokens(nxt) == "你"  # "你好" is always answered "你好呀..."


def test_mmi_trains_on_reversed_windows(dataset, tmp_path):
    from chitchat.tokens.dataset import load_dataset
    from chitchat.training.trainer import train

    fwd, rev = load_dataset(dataset, "train"), load_dataset(dataset, "train", mmi=True)
    assert not np.array_equal(fwd[0], rev[0]) and sorted(fwd[0]) == sorted(rev[0])
    out = tmp_path / "mmi"
    best = train(config(dataset, out, mmi=True, max_steps=3))
    assert json.loads((best / "training_info.json").read_text())["mmi"] is True
    assert json.loads((out / "train_config.json").read_text())["config"]["mmi"] is True


def test_resume_lands_on_the_same_step_and_weights_as_an_uninterrupted_run(dataset, tmp_path):
    import torch

    from chitchat.cli import main
    from chitchat.training.trainer import train

    dropout = {"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}  # the RNG state matters too
    kw = dict(max_steps=26, eval_every=4, model_config=dropout, seed=7, log_every=1)  # epochs of 20 steps
    train(config(dataset, tmp_path / "a", **kw))
    train(config(dataset, tmp_path / "b", stop_after_steps=10, **kw))
    assert json.loads((tmp_path / "b" / "last" / "training_state.json").read_text())["step"] == 10
    # the command line takes the rest of the settings from the run itself
    assert main(["train", "--data", str(dataset), "--output", str(tmp_path / "b"), "--resume", "--no-progress",
                 "--quiet", "--threads", "1"]) == 0
    sa, sb = (json.loads((tmp_path / r / "last" / "training_state.json").read_text()) for r in "ab")
    assert sa["step"] == sb["step"] == 26 and sa["epoch"] == sb["epoch"] == 1
    wa, wb = state_dict(tmp_path / "a" / "last"), state_dict(tmp_path / "b" / "last")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    la, lb = metrics(tmp_path / "a", "train"), metrics(tmp_path / "b", "train")
    assert [r["step"] for r in lb] == list(range(1, 27)) and [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert [r["loss"] for r in metrics(tmp_path / "a", "valid")] == [r["loss"] for r in metrics(tmp_path / "b", "valid")]


def test_resume_before_the_first_checkpoint_starts_the_run(dataset, tmp_path, capsys):
    from chitchat.cli import main
    from chitchat.training.config import RUN_CONFIG

    # what a run killed before its first checkpoint leaves: its settings and a few metrics lines
    run = tmp_path / "killed"
    run.mkdir()
    (run / RUN_CONFIG).write_text('{"config": {}}')
    (run / "metrics.jsonl").write_text('{"type": "train", "step": 3, "loss": 9.0}\n')
    (run / ".last.partial").mkdir()
    argv = ["train", "--data", str(dataset), "--output", str(run), "--no-progress", "--threads", "1",
            "--preset", "tiny", "--max-steps", "3", "--batch-tokens", "384"]
    assert main(argv) == 2 and "not empty: pass --resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert "no checkpoint to resume yet: starting the run from step 0" in capsys.readouterr().err
    assert json.loads((run / "last" / "training_state.json").read_text())["step"] == 3
    assert [r["step"] for r in metrics(run, "train")] == [] or metrics(run, "train")[0]["loss"] != 9.0
    # and a second --resume continues it as usual
    assert main(argv[:-4] + ["--max-steps", "5", "--resume", "--quiet"]) == 0
    assert json.loads((run / "last" / "training_state.json").read_text())["step"] == 5


def test_a_time_limited_run_shows_progress_against_its_time_budget(dataset, tmp_path, capsys):
    from chitchat.training.trainer import train

    train(config(dataset, tmp_path / "run", time_limit=2.0, progress=True, epochs=1000))
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    last = [line for line in bar if line.startswith("train")][-1]
    assert "/2 s" in last and "step=" in last, last
    steps = json.loads((tmp_path / "run" / "summary.json").read_text())["step"]
    assert f"step={steps}" in last and f"/{steps}" not in last.split("|")[-1].split("[")[0]


def test_extend_vocab_round_trip(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chitchat.model.gpt2 import build_model
    from chitchat.tokens.tokenizer import SPACE, SPECIAL_TOKENS, build_tokenizer, write_vocab
    from chitchat.training.trainer import train
    from chitchat.training.vocab import extend_embeddings

    old_pairs, new_pairs = PAIRS[:6], [("猫咪喵喵叫", "狗狗汪汪叫"), ("熊猫吃竹子", "鲸鱼游大海")]
    chars = lambda pairs: sorted({c for p in pairs for u in p for c in u})  # noqa: E731
    vocab_a = list(SPECIAL_TOKENS) + [SPACE] + chars(old_pairs)
    vocab_b = list(SPECIAL_TOKENS) + [SPACE] + chars(old_pairs + new_pairs)
    new_chars = sorted(set(vocab_b) - set(vocab_a))
    write_vocab(vocab_a, tmp_path / "a.txt")
    write_vocab(vocab_b, tmp_path / "b.txt")
    data_a = make_dataset(tmp_path, "a", synthetic_dialogues(60, 1, old_pairs), vocab=str(tmp_path / "a.txt"))
    data_b = make_dataset(tmp_path, "b", synthetic_dialogues(60, 2, old_pairs + new_pairs), vocab=str(tmp_path / "b.txt"))
    base = train(config(data_a, tmp_path / "base", max_steps=2))

    # without --extend-vocab: trained as [UNK], and the run says how many characters
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        plain = train(config(data_b, tmp_path / "plain", init_from=base, max_steps=1, verbose=True))
    assert f"{len(new_chars)} characters of the dataset" in err.getvalue() and "[UNK]" in err.getvalue()
    assert len(AutoTokenizer.from_pretrained(str(plain))) == len(vocab_a)

    ext = train(config(data_b, tmp_path / "ext", init_from=base, extend_vocab=True, max_steps=2))
    tok = AutoTokenizer.from_pretrained(str(ext))
    model = AutoModelForCausalLM.from_pretrained(str(ext))
    assert len(tok) == len(vocab_a) + len(new_chars) == model.config.vocab_size
    ids = tok.encode("熊猫吃竹子", add_special_tokens=False)
    assert tok.unk_token_id not in ids and min(ids) >= 0 and max(ids) < model.config.vocab_size
    assert tok.decode(ids) == "熊猫吃竹子"
    assert all(tok.convert_tokens_to_ids(c) >= len(vocab_a) for c in new_chars)
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    # the resizing itself: old rows kept, new rows at the mean embedding, LM head still tied
    m = build_model(build_tokenizer(vocab_a), "tiny", seed=0)
    before = m.get_input_embeddings().weight.detach().clone()
    extend_embeddings(m, len(vocab_b))
    after = m.get_input_embeddings().weight
    assert torch.equal(after[:len(vocab_a)], before)
    assert torch.allclose(after[len(vocab_a):], before.mean(0).expand(len(new_chars), -1))
    assert m.get_output_embeddings().weight.data_ptr() == after.data_ptr()
