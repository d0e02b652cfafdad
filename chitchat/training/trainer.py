"""Fit a GPT-2 dialogue model on a preprocessed dataset (with --mmi: the reverse MMI model).

Python API: `from chitchat.training.trainer import TrainConfig, train`; `train(cfg)` returns the directory of
the best model. A run directory (`--output`) holds:

    best/              the model with the lowest valid loss: a Hugging Face model directory (plus
                       training_info.json: step, valid loss, mmi); what `resolve_model_dir(output)` finds
    last/              the latest checkpoint: model directory + training state (chitchat.training.checkpoint)
    train_config.json  the settings of the run (`--resume` reuses them)
    metrics.jsonl      train loss / learning rate / tokens per second every `log_every` steps,
                       valid loss and perplexity at each evaluation
    loss.png           train and valid loss against steps
    summary.json       the closing summary (also printed)

An existing, non-empty output directory is refused unless `--resume` continues the run in it;
nothing is written before every input (dataset, checkpoint, model, configuration) has been checked.
A resumed run keeps the settings that define it (FIXED_ON_RESUME); epochs, max_steps, time_limit,
eval_every, patience, device and threads may change (a longer run recomputes its schedule).

Loss: the mean next-token cross-entropy over every non-padding target position of the global
batch (all micro-batches of all ranks), so that gradient accumulation and any number of
DistributedDataParallel ranks compute the same update. Batching: chitchat.training.batching; the loss
without full logits: chitchat.training.loss. Distributed: `torchrun --nproc_per_node N -m chitchat
train ...` (chitchat.training.dist); rank 0 alone writes. bf16 autocast on CUDA, fp32 on CPU.
Ctrl-C (or SIGTERM) stops at the next step boundary, saves last/, writes loss.png and the summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from chitchat.training.batching import collate, epoch_rng, group_steps, plan_batches
from chitchat.tokens.dataset import load_dataset
from chitchat.errors import ChitchatError
from chitchat.files import atomic_write
from chitchat.model.gpt2 import PRESETS, build_model, load_model, read_config_override, save_model
from chitchat.training.checkpoint import (
    capture_rng, commit_dir, load_optimizer_state, load_rng_state, new_partial_dir, read_training_state,
    recover_dir, restore_rng, save_rng_state, save_training_state,
)
from chitchat.training.dist import DistContext, init_distributed
from chitchat.training.report import (
    METRICS, append_metrics, plot_losses, summary_text, truncate_metrics, write_summary,
)
from chitchat.training.vocab import align_vocab, extend_embeddings, token_counts

RUN_CONFIG = "train_config.json"
TRAINING_INFO = "training_info.json"
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class TrainConfig:
    data: Path                          # dataset directory written by `chitchat preprocess`
    output: Path                        # run directory
    preset: str = "tiny"                # tiny | small | base (chitchat.model.gpt2.PRESETS)
    model_config: dict = field(default_factory=dict)  # GPT2Config fields overriding the preset
    mmi: bool = False                   # train on the reversed windows (the MMI model)
    epochs: int = 10
    max_steps: int | None = None        # optimiser steps; overrides epochs
    batch_tokens: int | None = None     # positions (padding included) per micro-batch; None: auto
    batch_size: int | None = None       # at most this many windows per micro-batch; None: no limit
    grad_accum: int = 1                 # micro-batches per rank per optimiser step
    lr: float = 1e-3
    schedule: str = "cosine"            # cosine | linear | constant, after the warm-up
    warmup_steps: int | None = None     # None: 5% of the planned steps (at most 1000)
    min_lr_ratio: float = 0.0           # the decay ends at lr * min_lr_ratio
    weight_decay: float = 0.01
    clip_norm: float | None = 1.0
    seed: int = 42
    eval_every: int | None = None       # steps between evaluations (also at every epoch end)
    patience: int | None = 3            # evaluations without improvement before stopping
    valid_data: Path | None = None      # another dataset (same vocabulary), all of it for validation
    init_from: Path | None = None       # continue from this model (or run) directory
    extend_vocab: bool = False          # with init_from: add the dataset's unknown characters
    resume: bool = False                # continue the run in `output` from last/
    device: str | None = None           # None: cuda if available, else cpu
    num_threads: int | None = None      # CPU threads (per process); None: the cores / local processes
    time_limit: float | None = None     # seconds of training (over all resumptions); the LR decays with it
    stop_after_steps: int | None = None  # save and stop once this step is reached (continue with resume)
    log_every: int = 10
    progress: bool | None = None        # progress bar; None: only on a terminal
    verbose: bool = True                # evaluation lines, warnings and the summary


# Settings that define the run; a resumed run must keep them (the rest may change on resume).
FIXED_ON_RESUME = ("mmi", "preset", "model_config", "extend_vocab", "batch_tokens", "batch_size", "grad_accum",
                   "lr", "schedule", "warmup_steps", "min_lr_ratio", "weight_decay", "clip_norm", "seed")


def config_to_json(cfg: TrainConfig) -> dict:
    return {f.name: (str(v) if isinstance(v, Path) else v) for f in fields(cfg) for v in [getattr(cfg, f.name)]}


def config_from_json(data: dict) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    kwargs = {k: v for k, v in data.items() if k in known}
    for k in ("data", "output", "valid_data", "init_from"):
        if kwargs.get(k) is not None:
            kwargs[k] = Path(kwargs[k])
    return TrainConfig(**kwargs)


def read_run_config(output: Path) -> dict | None:
    path = Path(output) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ChitchatError(f"{path}: corrupt run configuration ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ChitchatError(f"{path}: corrupt run configuration")
    return data


def check_config(cfg: TrainConfig) -> None:
    positive = {"epochs": cfg.epochs, "grad_accum": cfg.grad_accum, "log_every": cfg.log_every,
                "max_steps": cfg.max_steps, "batch_tokens": cfg.batch_tokens, "batch_size": cfg.batch_size,
                "eval_every": cfg.eval_every, "patience": cfg.patience, "num_threads": cfg.num_threads,
                "stop_after_steps": cfg.stop_after_steps}
    for name, value in positive.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ChitchatError(f"{name} must be a positive integer, not {value!r}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ChitchatError(f"learning rate must be positive, not {cfg.lr}")
    if cfg.schedule not in SCHEDULES:
        raise ChitchatError(f"unknown schedule {cfg.schedule!r} (choose from {', '.join(SCHEDULES)})")
    if cfg.preset not in PRESETS:
        raise ChitchatError(f"unknown preset {cfg.preset!r} (choose from {', '.join(PRESETS)})")
    if cfg.warmup_steps is not None and cfg.warmup_steps < 0:
        raise ChitchatError(f"warmup_steps must be >= 0, not {cfg.warmup_steps}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ChitchatError(f"min_lr_ratio must be in [0, 1], not {cfg.min_lr_ratio}")
    if cfg.time_limit is not None and not cfg.time_limit > 0:
        raise ChitchatError(f"time_limit must be positive, not {cfg.time_limit}")
    if cfg.clip_norm is not None and not cfg.clip_norm > 0:
        raise ChitchatError(f"clip_norm must be positive, not {cfg.clip_norm}")
    if cfg.extend_vocab and cfg.init_from is None and not cfg.resume:
        raise ChitchatError("--extend-vocab needs --init-from MODEL_DIR (a new model takes the dataset's vocabulary)")
    if not isinstance(cfg.model_config, dict):
        raise ChitchatError("model_config must be a dict of GPT2Config fields")
    from transformers import GPT2Config

    reference = GPT2Config()
    unknown = [k for k in cfg.model_config if not hasattr(reference, k)]
    if unknown:
        raise ChitchatError(f"unknown model config field(s): {', '.join(sorted(unknown))}")
    if "vocab_size" in cfg.model_config:
        raise ChitchatError("vocab_size comes from the vocabulary; remove it from the model config")


def resolve_device(name: str | None):
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ChitchatError(f"unknown device {name!r} (for example cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ChitchatError(f"device {name}: no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ChitchatError(f"device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ChitchatError(f"device {name}: MPS is not available")
    return dev


def auto_batch_tokens(lengths: np.ndarray) -> int:
    """About 64 micro-batches per epoch on small corpora, 4096 positions on large ones."""
    total = int(lengths.sum()) if len(lengths) else 0
    return int(min(4096, max(512, (total // 64) // 256 * 256)))


def lr_factor(cfg: TrainConfig, step: int, total: int, time_fraction: float = 0.0) -> float:
    """Multiplier of cfg.lr for optimiser step `step` (0-based): linear warm-up, then the decay.
    Progress is the larger of steps done / planned and (with a time limit) time used / limit;
    the automatic warm-up is the first 5% of the progress, at most 1000 steps."""
    if cfg.warmup_steps is not None:
        w = cfg.warmup_steps
        if step < w:
            return (step + 1) / w
        p = max((step - w) / max(1, total - w), time_fraction)
    else:
        p = max((step + 1) / max(total, 1), time_fraction)
        pw = min(0.05, 1000 / max(total, 1))
        if p < pw:
            return p / pw
        p = (p - pw) / (1 - pw)
    p = min(1.0, max(p, 0.0))
    if cfg.schedule == "constant":
        return 1.0
    lo = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * p))
    return 1 - (1 - lo) * p


def matmul_params(model) -> int:
    """Parameters that take part in matrix products per token: the transformer blocks, the final
    layer norm and the LM head (embedding lookups excluded)."""
    body = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("transformer.wte", "transformer.wpe")))
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return body + (head.numel() if tied else 0)


def training_flops(n_matmul: int, n_layer: int, d_model: int, tokens: int, sq_lengths: int) -> float:
    """6·N·tokens (forward + backward of the matrix products) + causal attention
    6·n_layer·d·Σℓ² (QKᵀ and AV: 4·d FLOPs per visible pair, ℓ²/2 pairs, ×3 for backward)."""
    return 6.0 * n_matmul * tokens + 6.0 * n_layer * d_model * sq_lengths


class _Interrupt:
    """Ctrl-C (or SIGTERM, as job schedulers send) sets a flag read at the next step boundary,
    where the run saves and stops; a second signal interrupts at once (the run still saves the
    state of the last completed step)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _log(cfg: TrainConfig, dist: DistContext, message: str) -> None:
    if cfg.verbose and dist.is_main:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)  # above the progress bar, if one is showing


def _fingerprint(ds) -> dict:
    m = ds.manifest
    return {"vocab_hash": m["vocab_hash"], "tokens": m["counts"]["tokens"], "windows": m["counts"]["windows"],
            "max_len": m["max_len"]}


def _check_dataset_tokenizer(ds) -> object:
    from chitchat.tokens.tokenizer import tokenizer_tokens, vocab_hash

    tok = ds.tokenizer()
    if vocab_hash(tokenizer_tokens(tok)) != ds.vocab_hash:
        raise ChitchatError(f"{ds.dir}: its tokenizer does not match the vocabulary named in manifest.json; "
                            "preprocess again")
    return tok


_RUN_FILES = {RUN_CONFIG, METRICS, "loss.png", "summary.json", "best", "last"}


def _foreign_files(out: Path) -> list[str]:
    """Entries of a run directory that no training run writes (hidden temporary ones are the trainer's)."""
    if not out.exists():
        return []
    if not out.is_dir():
        return [out.name]
    return sorted(p.name for p in out.iterdir() if p.name not in _RUN_FILES and not p.name.startswith("."))


class Trainer:
    """One training run (one process of it, under DistributedDataParallel)."""

    def __init__(self, cfg: TrainConfig, device, dist: DistContext):
        self.cfg, self.device, self.dist = cfg, device, dist
        self.out = Path(cfg.output)
        self.last_dir, self.best_dir = self.out / "last", self.out / "best"

    # ---- set-up: everything is checked before anything is written ----

    def prepare(self) -> None:
        cfg = self.cfg
        self.state: dict = {"step": 0, "epoch": 0, "epoch_step": 0, "elapsed": 0.0, "best_valid_loss": None,
                            "best_step": None, "bad_evals": 0, "last_eval_step": None, "valid_loss": None}
        saved = None
        restarting = False
        if cfg.resume:
            if self.dist.is_main:
                for d in (self.last_dir, self.best_dir):
                    recover_dir(d)
            self.dist.barrier()
        if cfg.resume and not (self.last_dir / "config.json").is_file():
            # stopped before its first checkpoint (or never started): start the run, and say so
            leftovers = _foreign_files(self.out)
            if leftovers:
                raise ChitchatError(f"{self.out}: no checkpoint to resume, and it holds files no training run "
                                    f"writes ({', '.join(leftovers[:3])}); choose another --output")
            _log(cfg, self.dist, f"{self.out}: no checkpoint to resume yet: starting the run from step 0")
            cfg = self.cfg = replace(cfg, resume=False)
            restarting = True
            if self.dist.is_main and self.out.is_dir():
                truncate_metrics(self.out, 0)
        if cfg.resume:
            saved = read_run_config(self.out)
            if saved is None:
                raise ChitchatError(f"{self.out}: not a training run (no {RUN_CONFIG})")
            previous = saved["config"]
            changed = [k for k in FIXED_ON_RESUME if previous.get(k) != config_to_json(cfg).get(k)]
            if changed:
                diffs = ", ".join(f"{k} {config_to_json(cfg).get(k)!r} (was {previous.get(k)!r})" for k in changed)
                raise ChitchatError(f"--resume must keep the run's settings; changed: {diffs}")
            self.state.update(read_training_state(self.last_dir))
        elif not restarting and self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise ChitchatError(f"{self.out} is not empty: pass --resume to continue the run in it, "
                                "or choose another --output")

        # data
        self.train_ds = load_dataset(cfg.data, "train", mmi=cfg.mmi)
        if len(self.train_ds) == 0:
            raise ChitchatError(f"{cfg.data}: the train split is empty")
        data_tok = _check_dataset_tokenizer(self.train_ds)
        if cfg.valid_data is not None:
            vd = load_dataset(cfg.valid_data, "train", mmi=cfg.mmi)
            if vd.vocab_hash != self.train_ds.vocab_hash:
                raise ChitchatError(f"{cfg.valid_data}: preprocessed with another vocabulary than {cfg.data}")
            vv = load_dataset(cfg.valid_data, "valid", mmi=cfg.mmi)
            vd.index = np.sort(np.concatenate([vd.index, vv.index]))
            self.valid_ds = vd
        else:
            self.valid_ds = load_dataset(cfg.data, "valid", mmi=cfg.mmi)
        fingerprint = _fingerprint(self.train_ds)
        if saved is not None and saved.get("dataset") != fingerprint:
            was = saved.get("dataset") or {}
            what = "another vocabulary" if was.get("vocab_hash") != fingerprint["vocab_hash"] else "different contents"
            raise ChitchatError(f"{cfg.data}: this dataset has {what} than the one the run in {self.out} was trained on")
        self.fingerprint = fingerprint

        # model and tokenizer
        self.alignment = None
        if cfg.resume:
            model, tok = self._load(self.last_dir, "checkpoint")
            self.alignment = align_vocab(tok, data_tok, self._counts(), extend=False)
            if self.alignment.added or len(tok) > model.config.vocab_size:
                raise ChitchatError(f"{self.last_dir}: checkpoint tokenizer and model do not match")
            self.model_name = saved.get("model_name", str(self.last_dir))
        elif cfg.init_from is not None:
            model, tok = self._load(cfg.init_from, "model")
            if cfg.model_config:
                _log(cfg, self.dist, "note: --config is ignored with --init-from (the model keeps its configuration)")
            self.alignment = align_vocab(tok, data_tok, self._counts(), extend=cfg.extend_vocab)
            if self.alignment.added:
                extend_embeddings(model, len(self.alignment.tokenizer))
            tok = self.alignment.tokenizer
            self.model_name = str(cfg.init_from)
        else:
            try:
                model = build_model(data_tok, cfg.preset, cfg.model_config, seed=cfg.seed)
            except (ValueError, TypeError, AssertionError) as e:
                raise ChitchatError(f"bad model configuration: {str(e).splitlines()[0]}") from None
            tok = data_tok
            self.model_name = f"preset {cfg.preset}" + (" + config" if cfg.model_config else "")
        self.id_map = self.alignment.id_map if self.alignment else None
        max_len = int(self.train_ds.manifest["max_len"])
        longest = int(max(self.train_ds.lengths.max(), self.valid_ds.lengths.max() if len(self.valid_ds) else 0))
        positions = int(model.config.n_positions)
        if max(max_len, longest) > positions:
            raise ChitchatError(f"{cfg.data}: windows of up to {max(max_len, longest)} tokens (max_len) do not fit "
                                f"the model's {positions} positions; preprocess with --max-len {positions} "
                                "or use a model with more positions")
        if len(tok) > model.config.vocab_size:
            raise ChitchatError(f"the tokenizer has {len(tok)} tokens but the model only "
                                f"{model.config.vocab_size} embeddings")
        self.model, self.tokenizer = model, tok
        self.saved_run = saved
        self.dist.barrier()  # every rank has checked its input before rank 0 writes anything

    def _counts(self) -> np.ndarray:
        return token_counts(self.train_ds.tokens, int(self.train_ds.manifest["vocab_size"]))

    def _load(self, path: Path, what: str):
        try:
            model, tok = load_model(path)
        except ChitchatError as e:
            raise ChitchatError(f"cannot load the {what}: {e}") from None
        except Exception as e:  # corrupt safetensors and the like
            raise ChitchatError(f"cannot load the {what} in {path}: {str(e).splitlines()[0][:200]}") from None
        if type(model).__name__ != "GPT2LMHeadModel":
            raise ChitchatError(f"{path}: a {type(model).__name__}, not a GPT-2 LM")
        return model, tok

    # ---- helpers ----

    def _plan(self, epoch: int) -> list[np.ndarray]:
        return plan_batches(self.train_lengths, self.batch_tokens, self.cfg.batch_size, epoch_rng(self.cfg.seed, epoch))

    def _tensors(self, ds, batch: np.ndarray):
        import torch

        b = collate([ds[int(i)] for i in batch], self.pad_id, self.id_map)
        ids = torch.from_numpy(b.input_ids).to(self.device, non_blocking=True)
        labels = torch.from_numpy(b.labels).to(self.device, non_blocking=True)
        return ids, labels, b

    def _autocast(self):
        import torch

        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # ---- the run ----

    def setup_training(self) -> None:
        import torch

        cfg, dist = self.cfg, self.dist
        self.model.to(self.device)
        self.model.train()
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.train_lengths = self.train_ds.lengths
        self.valid_lengths = self.valid_ds.lengths
        self.batch_tokens = cfg.batch_tokens or auto_batch_tokens(self.train_lengths)
        self.per_step = dist.world_size * cfg.grad_accum
        if self.saved_run is not None and self.saved_run.get("micro_batches_per_step", self.per_step) != self.per_step:
            raise ChitchatError(f"--resume needs the same processes x grad_accum "
                                f"({self.saved_run['micro_batches_per_step']} micro-batches per step), not {self.per_step}")
        self.steps_per_epoch = math.ceil(len(self._plan(0)) / self.per_step)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.valid_plan = plan_batches(self.valid_lengths, 2 * self.batch_tokens) if len(self.valid_ds) else []

        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = self.device.type in ("cpu", "cuda")
        try:
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused)
        except (RuntimeError, TypeError):
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
        if cfg.resume:
            try:
                self.optimizer.load_state_dict(load_optimizer_state(self.last_dir))
            except (ValueError, KeyError, RuntimeError) as e:
                raise ChitchatError(f"{self.last_dir}: optimizer state does not fit the model "
                                    f"({str(e).splitlines()[0]})") from None
            rng = load_rng_state(self.last_dir, dist.rank)
            if rng is not None:
                restore_rng(rng)
            else:
                torch.manual_seed(cfg.seed * 1000 + dist.rank + self.state["step"])
        else:
            torch.manual_seed(cfg.seed * 1000 + dist.rank)

        from chitchat.training.loss import CausalLMLoss

        self.loss_module = CausalLMLoss(self.model)
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self.ddp = self.loss_module
        conf = self.model.config
        self.n_matmul = matmul_params(self.model)
        self.n_layer, self.d_model = int(conf.n_layer), int(conf.n_embd)

    def write_start(self) -> None:
        cfg = self.cfg
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            truncate_metrics(self.out, self.state["step"])
            return
        run = {"config": config_to_json(cfg), "dataset": self.fingerprint, "model_name": self.model_name,
               "batch_tokens": self.batch_tokens, "micro_batches_per_step": self.per_step,
               "total_steps": self.total_steps,
               "world_size": self.dist.world_size, "device": str(self.device)}
        atomic_write(self.out / RUN_CONFIG, json.dumps(run, ensure_ascii=False, indent=2))

    def evaluate(self) -> float | None:
        import torch

        if not self.valid_plan:
            return None
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad(), self._autocast():
            for k, batch in enumerate(self.valid_plan):
                if k % self.dist.world_size != self.dist.rank:
                    continue
                ids, labels, b = self._tensors(self.valid_ds, batch)
                totals[0] += self.loss_module(ids, labels).double()
                totals[1] += b.targets
        self.model.train()
        self.dist.sum_(totals)
        return float(totals[0] / totals[1]) if totals[1] > 0 else None

    def save_checkpoint(self, rng: dict) -> None:
        """last/: model + tokenizer + training state, atomically (all ranks take part)."""
        dist = self.dist
        partial = new_partial_dir(self.last_dir) if dist.is_main else self.out / f".{self.last_dir.name}.partial"
        dist.barrier()
        save_rng_state(partial, dist.rank, rng)
        dist.barrier()
        if dist.is_main:
            save_model(self.model, self.tokenizer, partial)
            self._write_info(partial)
            # the schedule is a function of (step, elapsed time): these numbers restore it
            self.state["scheduler"] = {"schedule": self.cfg.schedule, "lr": self.cfg.lr, "total_steps": self.total_steps,
                                       "time_limit": self.cfg.time_limit, "last_lr": self.optimizer.param_groups[0]["lr"]}
            self.state["data"] = {"epoch": self.state["epoch"], "epoch_step": self.state["epoch_step"],
                                  "micro_batches_per_step": self.per_step, "batch_tokens": self.batch_tokens}
            save_training_state(partial, self.state, self.optimizer.state_dict())
            commit_dir(partial, self.last_dir)
        dist.barrier()

    def save_best(self) -> None:
        if self.dist.is_main:
            partial = new_partial_dir(self.best_dir)
            save_model(self.model, self.tokenizer, partial)
            self._write_info(partial)
            commit_dir(partial, self.best_dir)

    def _write_info(self, path: Path) -> None:
        s = self.state
        info = {"mmi": self.cfg.mmi, "step": s["step"], "valid_loss": s.get("valid_loss"),
                "valid_ppl": math.exp(min(s["valid_loss"], 50)) if s.get("valid_loss") is not None else None,
                "dataset": str(Path(self.cfg.data).resolve()), "model": self.model_name}
        (path / TRAINING_INFO).write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")

    def eval_and_save(self, rng: dict, save: bool = True) -> None:
        s = self.state
        loss = self.evaluate()
        s["last_eval_step"] = s["step"]
        if loss is not None:
            s["valid_loss"] = loss
            improved = s["best_valid_loss"] is None or loss < s["best_valid_loss"]
            if improved:
                s["best_valid_loss"], s["best_step"], s["bad_evals"] = loss, s["step"], 0
                self.save_best()
            else:
                s["bad_evals"] += 1
            if self.dist.is_main:
                append_metrics(self.out, {"type": "valid", "step": s["step"], "epoch": s["epoch"], "loss": loss,
                                          "ppl": math.exp(min(loss, 50)), "best": improved})
            _log(self.cfg, self.dist, f"step {s['step']}: valid loss {loss:.4f}  ppl {math.exp(min(loss, 50)):.2f}"
                                      f"{'  (best)' if improved else ''}")
        if save:
            self.save_checkpoint(rng)

    def run(self) -> Path:
        import torch

        cfg, dist, s = self.cfg, self.dist, self.state
        self.write_start()
        progress = (sys.stderr.isatty() if cfg.progress is None else cfg.progress) and dist.is_main
        from tqdm import tqdm

        desc = "train" + (" mmi" if cfg.mmi else "")
        by_time = cfg.time_limit is not None  # the clock, not a step count, ends such a run: show it
        if by_time:
            bar = tqdm(total=round(cfg.time_limit), initial=min(round(float(s.get("elapsed") or 0)), round(cfg.time_limit)),
                       desc=desc, unit="s", disable=not progress, file=sys.stderr, dynamic_ncols=True,
                       bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
        else:
            bar = tqdm(total=self.total_steps, initial=min(s["step"], self.total_steps), desc=desc, unit="step",
                       disable=not progress, file=sys.stderr, dynamic_ncols=True)
        counters = {"useful": 0, "computed": 0, "sq": 0, "seconds": 0.0}
        post: dict = {}  # the progress bar's loss, learning rate and throughput
        interval = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, targets since the last log
        interval_start, interval_tokens = time.perf_counter(), 0
        started = time.perf_counter()
        elapsed0 = float(s.get("elapsed") or 0.0)
        reason = None
        train_loss = None
        rng = capture_rng()
        sync_flags = torch.zeros(2, dtype=torch.float64, device=self.device)
        now_elapsed = elapsed0

        def elapsed() -> float:
            return elapsed0 + time.perf_counter() - started

        with _Interrupt() as interrupt:
            try:
                while reason is None:
                    if cfg.max_steps is None and s["epoch"] >= cfg.epochs:
                        reason = "completed"
                        break
                    plan = self._plan(s["epoch"])
                    steps = group_steps(len(plan), self.per_step)
                    while s["epoch_step"] < len(steps):
                        if cfg.max_steps is not None and s["step"] >= cfg.max_steps:
                            reason = "completed"
                        elif s.get("early_stopped"):
                            reason = "early stopping"
                        elif cfg.stop_after_steps is not None and s["step"] >= cfg.stop_after_steps:
                            reason = "stop_after_steps"
                        else:  # signals and the clock: every rank acts on the same values
                            sync_flags[0] = float(interrupt.requested)
                            sync_flags[1] = elapsed()
                            dist.max_(sync_flags)
                            now_elapsed = float(sync_flags[1])
                            if sync_flags[0]:
                                reason = "interrupted"
                            elif cfg.time_limit is not None and now_elapsed >= cfg.time_limit:
                                reason = "time limit"
                        rng = capture_rng()  # the state at this step boundary
                        if reason:
                            break
                        t0 = time.perf_counter()
                        loss_sum, targets, lr = self._train_step(plan, steps[s["epoch_step"]], now_elapsed, counters)
                        counters["seconds"] += time.perf_counter() - t0
                        interval[0] += loss_sum
                        interval[1] += targets
                        s["step"] += 1
                        s["epoch_step"] += 1
                        if by_time:
                            bar.update(min(elapsed(), cfg.time_limit) - bar.n)
                            bar.set_postfix(post | {"step": s["step"]}, refresh=False)
                        else:
                            bar.update(1)
                        if s["step"] % cfg.log_every == 0:
                            dist.sum_(interval)
                            train_loss = float(interval[0] / interval[1]) if interval[1] > 0 else None
                            now = time.perf_counter()
                            tokens = torch.tensor([counters["useful"] - interval_tokens], dtype=torch.float64,
                                                  device=self.device)
                            dist.sum_(tokens)
                            tps = float(tokens) / max(now - interval_start, 1e-9)
                            interval_start, interval_tokens = now, counters["useful"]
                            interval.zero_()
                            if dist.is_main and train_loss is not None:
                                append_metrics(self.out, {"type": "train", "step": s["step"], "epoch": s["epoch"],
                                                          "loss": train_loss, "lr": lr, "tokens_per_s": round(tps, 1),
                                                          "elapsed": round(elapsed(), 2)})
                            post = {"loss": f"{train_loss:.3f}" if train_loss else "-", "lr": f"{lr:.2e}",
                                    "tok_s": f"{tps:,.0f}"}
                            bar.set_postfix(post | ({"step": s["step"]} if by_time else {}), refresh=False)
                        if (cfg.eval_every and s["step"] % cfg.eval_every == 0 and s["epoch_step"] < len(steps)):
                            s["elapsed"] = elapsed()
                            self.eval_and_save(capture_rng())
                            self._check_patience()
                    if reason:
                        break
                    s["epoch"] += 1
                    s["epoch_step"] = 0
                    s["elapsed"] = elapsed()
                    self.eval_and_save(capture_rng())
                    self._check_patience()
            except KeyboardInterrupt:
                reason = "interrupted"
                # the step in progress is abandoned: the state is that of the last step boundary
            bar.close()
            s["elapsed"] = elapsed()
            if reason == "interrupted":
                self.model.zero_grad(set_to_none=True)
                self.save_checkpoint(rng)
            elif reason == "stop_after_steps":
                self.save_checkpoint(capture_rng())
            else:
                final_rng = capture_rng()
                if s.get("last_eval_step") != s["step"]:
                    self.eval_and_save(final_rng)
                if not self.valid_plan:
                    self.save_best()
        self._finish(reason, counters, train_loss)
        if reason == "interrupted":
            raise KeyboardInterrupt
        return self.best_dir if self.best_dir.exists() else self.last_dir

    def _check_patience(self) -> None:
        s, p = self.state, self.cfg.patience
        if p is not None and s["best_valid_loss"] is not None and s["bad_evals"] >= p:
            s["early_stopped"] = True

    def _train_step(self, plan, slots, elapsed: float, counters: dict):
        import torch

        cfg, dist, s = self.cfg, self.dist, self.state
        mine = slots[dist.rank * cfg.grad_accum:(dist.rank + 1) * cfg.grad_accum]
        real = [plan[i] for i in slots if i is not None]
        global_tokens = sum(int(self.train_lengths[b].sum()) for b in real)
        global_targets = global_tokens - sum(len(b) for b in real)
        scale = dist.world_size / max(global_targets, 1)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        targets = 0
        if not dist.enabled:
            mine = [slot for slot in mine if slot is not None]  # a lone process need not keep step
        for j, slot in enumerate(mine):
            batch = plan[slot if slot is not None else slots[0]]
            ids, labels, b = self._tensors(self.train_ds, batch)
            sync = nullcontext() if (not dist.enabled or j == len(mine) - 1) else self.ddp.no_sync()
            with sync:
                with self._autocast():
                    loss = self.ddp(ids, labels)
                (loss * (scale if slot is not None else 0.0)).backward()
            if slot is not None:
                loss_sum += loss.detach().double()
                targets += b.targets
                counters["useful"] += b.tokens
                counters["computed"] += b.input_ids.size
                counters["sq"] += b.sq_lengths
        if cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
        time_fraction = elapsed / cfg.time_limit if cfg.time_limit else 0.0
        lr = cfg.lr * lr_factor(cfg, s["step"], self.total_steps, time_fraction)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        s["tokens_seen"] = s.get("tokens_seen", 0) + global_tokens  # every rank's, over all resumptions
        return loss_sum, targets, lr

    def _finish(self, reason: str, counters: dict, train_loss: float | None) -> dict:
        import torch

        dist, s = self.dist, self.state
        totals = torch.tensor([counters["useful"], counters["computed"], counters["sq"]], dtype=torch.float64,
                              device=self.device)
        dist.sum_(totals)
        useful, computed, sq = (int(x) for x in totals.tolist())
        seconds = counters["seconds"]
        flops = training_flops(self.n_matmul, self.n_layer, self.d_model, useful, sq)
        summary = {
            "model": self.model_name, "mmi": self.cfg.mmi, "params": sum(p.numel() for p in self.model.parameters()),
            "matmul_params": self.n_matmul, "device": str(self.device), "world_size": dist.world_size,
            "step": s["step"], "total_steps": self.total_steps, "epochs_done": s["step"] / max(self.steps_per_epoch, 1),
            "stop_reason": reason, "train_loss": train_loss, "valid_loss": s.get("valid_loss"),
            "best_valid_loss": s.get("best_valid_loss"), "best_step": s.get("best_step"),
            "useful_tokens": useful, "computed_positions": computed,
            "tokens_seen": s.get("tokens_seen", 0), "elapsed": s.get("elapsed"),  # the whole run, resumptions too
            "padding_fraction": 1 - useful / computed if computed else 0.0,
            "train_seconds": seconds, "useful_tokens_per_s": useful / seconds if seconds else 0.0,
            "model_flops": flops, "batch_tokens": self.batch_tokens,
            "best_dir": str(self.best_dir), "last_dir": str(self.last_dir),
            "metrics": str(self.out / METRICS), "plot": None,
        }
        if dist.is_main:
            plot = plot_losses(self.out, title=f"{self.model_name}{' (MMI)' if self.cfg.mmi else ''}")
            summary["plot"] = str(plot) if plot else None
            write_summary(self.out, summary)
            if self.cfg.verbose:
                print(summary_text(summary), flush=True)
        return summary


def train(cfg: TrainConfig) -> Path:
    """Train as configured; returns the directory of the best model (`output/best`)."""
    import torch

    check_config(cfg)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = resolve_device(cfg.device)
    dist = init_distributed(device.type)
    threads = torch.get_num_threads()
    try:
        if device.type == "cuda" and dist.enabled:
            device = torch.device("cuda", dist.local_rank)
        if device.type == "cpu":
            want = cfg.num_threads or max(1, (os.cpu_count() or 1) // dist.local_world_size)
            torch.set_num_threads(want)
        elif device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # the caller's random state is left as it was
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            trainer = Trainer(cfg, device, dist)
            trainer.prepare()
            if trainer.alignment is not None:
                message = trainer.alignment.message(trainer.model_name)
                if message:
                    _log(cfg, dist, ("warning: " if trainer.alignment.unk_types else "") + message)
            trainer.setup_training()
            return trainer.run()
    finally:
        torch.set_num_threads(threads)
        dist.close()


# ---- command line ----

def add_arguments(p) -> None:
    # Options left out are absent from `args` (SUPPRESS): a resumed run then keeps its own value.
    p.argument_default = argparse.SUPPRESS
    p.add_argument("--data", required=True, type=Path, help="dataset directory written by `chitchat preprocess`")
    p.add_argument("--output", "-o", required=True, type=Path, help="run directory (best/, last/, metrics.jsonl, loss.png)")
    p.add_argument("--preset", choices=tuple(PRESETS), help="model size (default tiny)")
    p.add_argument("--config", type=Path, metavar="JSON", help="GPT2Config fields overriding the preset")
    p.add_argument("--mmi", action="store_true", help="train the reverse MMI model (reversed windows)")
    p.add_argument("--epochs", type=int, help="passes over the train split (default 10)")
    p.add_argument("--max-steps", type=int, help="optimiser steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, help="at most N windows per micro-batch (default: no limit)")
    p.add_argument("--batch-tokens", type=int,
                   help="positions per micro-batch, padding included (default: auto, at most 4096)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step and process (default 1)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--schedule", choices=SCHEDULES, help="decay after the warm-up (default cosine)")
    p.add_argument("--warmup-steps", type=int, help="warm-up steps (default 5%% of the steps, at most 1000)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    p.add_argument("--clip-norm", type=float, help="gradient clipping norm (default 1.0)")
    p.add_argument("--seed", type=int, help="seed of initialisation, data order and dropout (default 42)")
    p.add_argument("--eval-every", type=int, help="evaluate every N steps as well as at each epoch end")
    p.add_argument("--patience", type=int,
                   help="stop after N evaluations without improvement (default 3; 0: never)")
    p.add_argument("--valid-data", type=Path, help="another dataset to validate on (all its windows)")
    p.add_argument("--init-from", type=Path, metavar="MODEL_DIR", help="continue from this model or run directory")
    p.add_argument("--extend-vocab", action="store_true",
                   help="with --init-from: add the dataset's characters missing from the model's vocabulary")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, help="CPU threads per process (default: cores / processes)")
    p.add_argument("--stop-after-steps", type=int, metavar="N",
                   help="save and stop at step N, the schedule still that of --max-steps (continue with --resume)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop after this much training time (the learning rate decays with it)")
    p.add_argument("--log-every", type=int, help="steps between metrics lines (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="no evaluation lines and no summary")


_ARG_FIELDS = {"preset": "preset", "mmi": "mmi", "epochs": "epochs", "max_steps": "max_steps", "batch_size": "batch_size",
               "batch_tokens": "batch_tokens", "grad_accum": "grad_accum", "lr": "lr", "schedule": "schedule",
               "warmup_steps": "warmup_steps", "weight_decay": "weight_decay", "clip_norm": "clip_norm", "seed": "seed",
               "eval_every": "eval_every", "patience": "patience", "valid_data": "valid_data", "init_from": "init_from",
               "extend_vocab": "extend_vocab", "device": "device", "threads": "num_threads", "time_limit": "time_limit",
               "log_every": "log_every", "stop_after_steps": "stop_after_steps"}


def config_from_args(args) -> TrainConfig:
    """Options given on the command line; the rest from the run being resumed, else the defaults."""
    base: dict = {}
    if getattr(args, "resume", False):
        saved = read_run_config(args.output)
        if saved is not None:
            base = {k: v for k, v in saved["config"].items() if k in FIXED_ON_RESUME or k in
                    ("epochs", "max_steps", "eval_every", "patience", "valid_data", "init_from", "time_limit", "log_every")}
    given = {field_: getattr(args, arg) for arg, field_ in _ARG_FIELDS.items() if getattr(args, arg, None) is not None}
    if getattr(args, "config", None) is not None:
        given["model_config"] = read_config_override(args.config)
    if given.get("patience") == 0:
        given["patience"] = None
    merged = {**base, **given, "data": str(args.data), "output": str(args.output),
              "resume": bool(getattr(args, "resume", False)),
              "progress": False if getattr(args, "no_progress", False) else None,
              "verbose": not getattr(args, "quiet", False)}
    return config_from_json(merged)


def run(args) -> int:
    cfg = config_from_args(args)
    train(cfg)
    return 0
