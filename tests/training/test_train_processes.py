"""`chitchat train` as a process and on bad input: a kill during a save, Ctrl-C, two-process DDP, one-line
errors that overwrite nothing, and the quality bar on the shared LCCC toy corpus. Tiny preset, one CPU
thread."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from chitchat.errors import ChitchatError
from support import PYTHON, ROOT, SHARED
from train_helpers import PAIRS, child_env, config, make_dataset, metrics, state_dict, synthetic_dialogues


KILLER = r"""
import os, sys, time
from pathlib import Path
import chitchat.training.trainer as T
import chitchat.training.checkpoint as C
phase, marker = sys.argv[1], Path(sys.argv[2])
def pause():
    marker.write_text("paused")
    time.sleep(600)
if phase == "writing":          # inside the second save, the training state half written
    real, calls = T.save_training_state, []
    def save(path, state, opt):
        calls.append(1)
        if len(calls) == 2:
            (path / "training_state.json").write_text('{"version": 1, "st')
            pause()
        real(path, state, opt)
    T.save_training_state = save
elif phase == "between-renames":  # no atomic exchange: killed with `last` renamed away
    C._exchange = lambda a, b: False
    real_rename = os.rename
    def rename(a, b):
        real_rename(a, b)
        if Path(b).name == ".last.old":
            pause()
    C.os.rename = rename
from chitchat.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("phase", ["writing", "between-renames"])
def test_kill_during_a_save_leaves_a_loadable_checkpoint(dataset, tmp_path, phase):
    from transformers import AutoModelForCausalLM

    from chitchat.training.trainer import train
    from chitchat.training.checkpoint import read_training_state

    out, marker = tmp_path / "run", tmp_path / "paused"
    args = ["train", "--data", str(dataset), "--output", str(out), "--max-steps", "8", "--eval-every", "3",
            "--batch-tokens", "384", "--threads", "1", "--no-progress", "--quiet"]
    proc = subprocess.Popen([PYTHON, "-c", KILLER, phase, str(marker), *args], env=child_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 150
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the child never reached the second save"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 in the middle of saving the step-6 checkpoint
    finally:
        proc.kill()
        proc.wait()
    from chitchat.training.checkpoint import recover_dir

    recover_dir(out / "last")
    expected = 6 if phase == "between-renames" else 3  # the new copy was complete / the previous one
    assert read_training_state(out / "last")["step"] == expected
    AutoModelForCausalLM.from_pretrained(str(out / "last"))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".last")]
    best = train(config(dataset, out, max_steps=8, eval_every=3, resume=True))
    assert read_training_state(out / "last")["step"] == 8 and (best / "model.safetensors").is_file()


def test_ctrl_c_saves_the_last_completed_step_plots_and_exits_130(dataset, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([PYTHON, "-m", "chitchat", "train", "--data", str(dataset), "--output", str(out),
                             "--epochs", "1000", "--batch-tokens", "384", "--log-every", "1", "--threads", "1",
                             "--no-progress"], env=child_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 150
        while not (out / "metrics.jsonl").is_file() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "chitchat train: interrupted" in stderr and "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted" and "stopped: interrupted" in stdout
    state = json.loads((out / "last" / "training_state.json").read_text())
    assert state["step"] == summary["step"] >= 3
    assert metrics(out, "train")[-1]["step"] == state["step"]  # nothing logged beyond the saved step
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "loss.png").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process_over_the_same_global_batches(dataset, tmp_path):
    from chitchat.training.trainer import train

    common = ["--data", str(dataset), "--max-steps", "4", "--batch-tokens", "384", "--log-every", "1",
              "--seed", "3", "--threads", "1", "--no-progress", "--quiet", "--device", "cpu"]
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "chitchat", "train", "--output", str(tmp_path / "ddp"), *common]
    done = subprocess.run(cmd, env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    train(config(dataset, tmp_path / "one", max_steps=4, grad_accum=2, log_every=1, seed=3))
    ddp, one = metrics(tmp_path / "ddp", "train"), metrics(tmp_path / "one", "train")
    assert [r["step"] for r in ddp] == [r["step"] for r in one] == [1, 2, 3, 4]
    for a, b in zip(ddp, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert json.loads((tmp_path / "ddp" / "train_config.json").read_text())["world_size"] == 2
    wa, wb = state_dict(tmp_path / "ddp" / "last"), state_dict(tmp_path / "one" / "last")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4


# ---------------------------------------------------------------- bad input

def test_bad_input_gives_one_line_and_overwrites_nothing(dataset, tmp_path, capsys):
    from chitchat.cli import main
    from chitchat.training.trainer import train

    def fails(argv, *needles):
        assert main(["train", "--data", str(dataset), "--no-progress", "--quiet", "--threads", "1", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        for n in needles:
            assert n in err, err
        return err

    # output that already holds something
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    fails(["--output", str(busy)], "not empty", "--resume")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    # nothing to resume in a directory that is not a run: refused, left as it was
    fails(["--output", str(busy), "--resume"], "no checkpoint", "keep.txt")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    # max_len (64) above the model's positions
    cfg = tmp_path / "small.json"
    cfg.write_text('{"n_positions": 32}')
    fails(["--output", str(tmp_path / "short"), "--config", str(cfg)], "32 positions", "--max-len")
    assert not (tmp_path / "short").exists()
    # a corrupt checkpoint: refused, left as it was
    run = tmp_path / "run"
    train(config(dataset, run, max_steps=2))
    weights = run / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = {p.name: p.read_bytes() for p in (run / "last").iterdir()}
    fails(["--output", str(run), "--resume", "--max-steps", "4"], "cannot load the checkpoint")
    assert {p.name: p.read_bytes() for p in (run / "last").iterdir()} == before
    # a dataset from another vocabulary than the run's
    from chitchat.tokens.tokenizer import SPACE, SPECIAL_TOKENS, write_vocab

    run2 = tmp_path / "run2"
    train(config(dataset, run2, max_steps=2))
    write_vocab(list(SPECIAL_TOKENS) + [SPACE] + sorted({c for p in PAIRS for u in p for c in u}), tmp_path / "v.txt")
    other = make_dataset(tmp_path, "other", synthetic_dialogues(40), vocab=str(tmp_path / "v.txt"))
    assert main(["train", "--data", str(other), "--output", str(run2), "--resume", "--quiet", "--no-progress"]) == 2
    assert "another vocabulary" in capsys.readouterr().err
    # settings a resumed run cannot change, and unknown model config fields
    fails(["--output", str(run2), "--resume", "--lr", "0.5"], "lr 0.5")
    (tmp_path / "typo.json").write_text('{"n_layers": 3}')
    fails(["--output", str(tmp_path / "typo"), "--config", str(tmp_path / "typo.json")], "n_layers")
    with pytest.raises(ChitchatError, match="--init-from"):
        train(config(dataset, tmp_path / "x", extend_vocab=True))


# ---------------------------------------------------------------- quality on real data

def _unigram_perplexity(train_ds, valid_ds, vocab_size: int) -> float:
    """Add-one smoothed unigram model over the same targets the LM predicts (all but [CLS])."""
    counts = np.ones(vocab_size)
    for i in range(len(train_ds)):
        np.add.at(counts, np.asarray(train_ds[i][1:], dtype=np.int64), 1)
    logp = np.log(counts / counts.sum())
    total = sum(float(logp[np.asarray(valid_ds[i][1:], dtype=np.int64)].sum()) for i in range(len(valid_ds)))
    n = sum(len(valid_ds[i]) - 1 for i in range(len(valid_ds)))
    return math.exp(-total / n)


def test_sixty_seconds_on_lccc_toy_beats_the_unigram_perplexity(tmp_path):
    if not (SHARED / "lccc_toy" / "train.json").is_file():
        pytest.skip(f"{SHARED} is absent (the shared corpora live beside the project)")
    from chitchat.tokens.dataset import load_dataset
    from chitchat.tokens.preprocess import PreprocessConfig, preprocess
    from chitchat.training.trainer import train

    for split in ("train", "valid"):
        preprocess(PreprocessConfig(inputs=[str(SHARED / "lccc_toy" / f"{split}.json")], output=tmp_path / split,
                                    valid_fraction=0.0, progress=False))
    train_ds, valid_ds = load_dataset(tmp_path / "train", "train"), load_dataset(tmp_path / "valid", "train")
    unigram = _unigram_perplexity(train_ds, valid_ds, int(train_ds.manifest["vocab_size"]))
    assert 300 < unigram < 600  # 417 for these targets ("about 377" counting characters only, differently)
    out = tmp_path / "run"
    train(config(tmp_path / "train", out, valid_data=tmp_path / "valid", epochs=1000, time_limit=60,
                 batch_tokens=None, patience=None))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "time limit"
    ppl = math.exp(summary["best_valid_loss"])
    assert ppl < min(unigram, 377), (ppl, unigram, summary["step"])
