"""`chitchat train`: batching, loss, schedule, checkpoints, resume, DDP, vocabulary extension,
bad input, and the quality bar on the shared LCCC toy corpus. Tiny preset, one CPU thread."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chitchat.errors import ChitchatError

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "corpora"
_VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PYTHON) if _VENV_PYTHON.exists() else sys.executable

PAIRS = [
    ("你好", "你好呀,很高兴认识你"), ("今天天气怎么样", "今天天气很好,适合出去玩"), ("你喜欢吃什么", "我喜欢吃米饭和面条"),
    ("你在做什么", "我在看书呢"), ("周末去哪里玩", "我们去公园散步吧"), ("你会唱歌吗", "会一点,我喜欢唱歌"),
    ("晚饭吃了吗", "还没有,一起去吃吧"), ("你几岁了", "我今年二十岁"), ("你叫什么名字", "我叫小明"),
    ("明天见", "好的,明天见"), ("你喜欢运动吗", "喜欢,我每天跑步"), ("最近忙吗", "有点忙,工作很多"),
]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    return env


def synthetic_dialogues(n: int, seed: int = 0, pairs=PAIRS) -> list[list[str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        d = []
        for _ in range(rng.randint(1, 3)):
            q, a = rng.choice(pairs)
            d += [q, a]
        out.append(d)
    return out


def make_dataset(tmp: Path, name: str, dialogues, vocab: str | None = None, max_len: int = 64,
                 valid_fraction: float = 0.1) -> Path:
    from chitchat.tokens.preprocess import PreprocessConfig, preprocess

    src = tmp / f"{name}.json"
    src.write_text(json.dumps(dialogues, ensure_ascii=False), encoding="utf-8")
    kwargs = {"vocab": vocab} if vocab else {}
    preprocess(PreprocessConfig(inputs=[str(src)], output=tmp / name, max_len=max_len, valid_fraction=valid_fraction,
                                progress=False, **kwargs))
    return tmp / name


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), "synthetic", synthetic_dialogues(240))


def config(data: Path, out: Path, **kw):
    from chitchat.training.config import TrainConfig

    base = dict(data=data, output=out, preset="tiny", batch_tokens=384, num_threads=1, progress=False, verbose=False)
    base.update(kw)
    return TrainConfig(**base)


def metrics(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def state_dict(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


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
