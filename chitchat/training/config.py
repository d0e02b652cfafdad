"""What defines a training run: TrainConfig (each field with its command-line flag and help, see
chitchat.options), its validation, the run configuration file (train_config.json) and the learning-rate
schedule."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from chitchat.errors import ChitchatError
from chitchat.model.gpt2 import PRESETS
from chitchat.options import option

RUN_CONFIG = "train_config.json"
TRAINING_INFO = "training_info.json"
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class TrainConfig:
    data: Path = option(metavar="DIR", help="dataset directory written by `chitchat preprocess`")
    output: Path = option(aliases=("-o",), metavar="DIR", help="run directory (best/, last/, metrics.jsonl, loss.png)")
    preset: str = option("tiny", choices=tuple(PRESETS), help="model size (chitchat.model.gpt2.PRESETS)")
    model_config: dict = option(default_factory=dict, cli=False,  # on the command line: --config JSON
                                help="GPT2Config fields overriding the preset")
    mmi: bool = option(False, help="train the reverse MMI model (reversed windows)")
    epochs: int = option(10, metavar="N", help="passes over the train split")
    max_steps: int | None = option(None, metavar="N", help="optimiser steps (overrides --epochs)")
    batch_tokens: int | None = option(None, metavar="N", help="positions per micro-batch, padding included "
                                      "(none: auto, about 64 micro-batches per epoch, 512 to 4096)")
    batch_size: int | None = option(None, metavar="N", help="at most N windows per micro-batch (none: no limit)")
    grad_accum: int = option(1, metavar="N", help="micro-batches per optimiser step and process")
    lr: float = option(1e-3, help="peak learning rate")
    schedule: str = option("cosine", choices=SCHEDULES, help="decay after the warm-up")
    warmup_steps: int | None = option(None, metavar="N", help="warm-up steps (none: 5% of the steps, at most 1000)")
    min_lr_ratio: float = option(0.0, metavar="R", help="the decay ends at the learning rate times R")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    clip_norm: float | None = option(1.0, help="gradient clipping norm")
    seed: int = option(42, help="seed of initialisation, data order and dropout")
    eval_every: int | None = option(None, metavar="N", help="evaluate every N steps as well as at each epoch end")
    patience: int | None = option(3, metavar="N", help="stop after N evaluations without improvement (0: never)")
    valid_data: Path | None = option(None, metavar="DIR",
                                     help="another dataset (same vocabulary) to validate on, all its windows")
    init_from: Path | None = option(None, metavar="MODEL_DIR", help="continue from this model or run directory")
    extend_vocab: bool = option(False, help="with --init-from: add the dataset's characters missing from the "
                                "model's vocabulary")
    resume: bool = option(False, help="continue the run in --output from its last checkpoint")
    device: str | None = option(None, help="cpu, cuda, cuda:N (none: cuda if available, else cpu)")
    num_threads: int | None = option(None, flag="--threads", metavar="N",
                                     help="CPU threads per process (none: the cores / local processes)")
    time_limit: float | None = option(None, metavar="SECONDS", help="stop after this much training time, over all "
                                      "resumptions (the learning rate decays with it)")
    stop_after_steps: int | None = option(None, metavar="N", help="save and stop at step N, the schedule still that "
                                          "of --max-steps (continue with --resume)")
    log_every: int = option(10, metavar="N", help="steps between metrics lines")
    progress: bool | None = option(None, help="progress bar (none: only on a terminal)")
    verbose: bool = option(True, cli=False,  # on the command line: --quiet
                           help="evaluation lines, warnings and the summary")


# Settings that define the run; a resumed run must keep them (the rest may change on resume).
FIXED_ON_RESUME = ("mmi", "preset", "model_config", "extend_vocab", "batch_tokens", "batch_size", "grad_accum",
                   "lr", "schedule", "warmup_steps", "min_lr_ratio", "weight_decay", "clip_norm", "seed")
# Settings a resumed run takes from its train_config.json unless the command line gives them.
KEPT_ON_RESUME = FIXED_ON_RESUME + ("epochs", "max_steps", "eval_every", "patience", "valid_data", "init_from",
                                   "time_limit", "log_every")


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
    from transformers import GPT2Config  # heavy: imported when a run starts, not for `chitchat train --help`

    reference = GPT2Config()
    unknown = [k for k in cfg.model_config if not hasattr(reference, k)]
    if unknown:
        raise ChitchatError(f"unknown model config field(s): {', '.join(sorted(unknown))}")
    if "vocab_size" in cfg.model_config:
        raise ChitchatError("vocab_size comes from the vocabulary; remove it from the model config")


def resolve_device(name: str | None):
    import torch  # heavy: imported when a run starts, not for `chitchat train --help`

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
