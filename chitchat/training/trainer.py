"""Fit a GPT-2 dialogue model on a preprocessed dataset (with --mmi: the reverse MMI model).

Python API: `from chitchat.training.trainer import TrainConfig, train` (TrainConfig lives in
chitchat.training.config, the command line in chitchat.commands.train); `train(cfg)` returns the directory of
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

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from transformers.utils import logging as hf_logging

from chitchat.files import atomic_write
from chitchat.engine.settings import generation_config
from chitchat.model.gpt2 import save_model
from chitchat.training.batching import collate, epoch_rng, group_steps, plan_batches
from chitchat.training.checkpoint import (
    capture_rng, commit_dir, load_optimizer_state, load_rng_state, new_partial_dir, restore_rng, save_rng_state,
    save_training_state,
)
from chitchat.errors import ChitchatError
from chitchat.training.config import (  # noqa: F401 (TrainConfig, RUN_CONFIG, lr_factor: the Python API)
    RUN_CONFIG, TRAINING_INFO, TrainConfig, auto_batch_tokens, check_config, config_to_json, lr_factor, resolve_device,
)
from chitchat.training.dist import DistContext, StopSignals, init_distributed
from chitchat.training.inputs import load_inputs, note
from chitchat.training.loss import CausalLMLoss
from chitchat.training.report import (
    METRICS, append_metrics, matmul_params, plot_losses, summary_text, training_flops, truncate_metrics, write_summary,
)


class Trainer:
    """One training run (one process of it, under DistributedDataParallel)."""

    def __init__(self, cfg: TrainConfig, device, dist: DistContext):
        self.cfg, self.device, self.dist = cfg, device, dist
        self.out = Path(cfg.output)
        self.last_dir, self.best_dir = self.out / "last", self.out / "best"

    def prepare(self) -> None:
        """Every input checked (chitchat.training.inputs) before anything is written."""
        inputs = load_inputs(self.cfg, self.dist)
        self.cfg, self.state, self.saved_run = inputs.cfg, inputs.state, inputs.saved_run
        self.train_ds, self.valid_ds, self.fingerprint = inputs.train_ds, inputs.valid_ds, inputs.fingerprint
        self.model, self.tokenizer, self.model_name = inputs.model, inputs.tokenizer, inputs.model_name
        self.alignment, self.id_map = inputs.alignment, inputs.id_map
        if self.alignment is not None:
            message = self.alignment.message(self.model_name)
            if message:
                note(self.cfg, self.dist, ("warning: " if self.alignment.unk_types else "") + message)

    # ---- helpers ----

    def _plan(self, epoch: int) -> list[np.ndarray]:
        return plan_batches(self.train_lengths, self.batch_tokens, self.cfg.batch_size, epoch_rng(self.cfg.seed, epoch))

    def _tensors(self, ds, batch: np.ndarray):
        b = collate([ds[int(i)] for i in batch], self.pad_id, self.id_map)
        ids = torch.from_numpy(b.input_ids).to(self.device, non_blocking=True)
        labels = torch.from_numpy(b.labels).to(self.device, non_blocking=True)
        return ids, labels, b

    def _autocast(self):
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # ---- the run ----

    def setup_training(self) -> None:
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

        self.loss_module = CausalLMLoss(self.model)
        if dist.enabled:
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
            save_model(self.model, self.tokenizer, partial, generation_config())
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
            save_model(self.model, self.tokenizer, partial, generation_config())
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
            note(self.cfg, self.dist, f"step {s['step']}: valid loss {loss:.4f}  ppl {math.exp(min(loss, 50)):.2f}"
                                      f"{'  (best)' if improved else ''}")
        if save:
            self.save_checkpoint(rng)

    def run(self) -> Path:
        """The training loop: epochs of steps until a stop reason; then the closing save and summary."""
        self.write_start()
        self._start_clock()
        bar = self._progress_bar()
        with StopSignals() as interrupt:
            try:
                while self.reason is None:
                    self._run_epoch(bar, interrupt)
            except KeyboardInterrupt:
                self.reason = "interrupted"
                # the step in progress is abandoned: the state is that of the last step boundary
            bar.close()
            self._save_at_end()
        self._finish(self.reason, self.counters, self.train_loss)
        if self.reason == "interrupted":
            raise KeyboardInterrupt
        return self.best_dir if self.best_dir.exists() else self.last_dir

    def _start_clock(self) -> None:
        """The loop's counters; elapsed time continues that of the runs resumed."""
        self.counters = {"useful": 0, "computed": 0, "sq": 0, "seconds": 0.0}
        self.post: dict = {}  # the progress bar's loss, learning rate and throughput
        self.interval = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, targets since the last log
        self.interval_start, self.interval_tokens = time.perf_counter(), 0
        self.started = time.perf_counter()
        self.elapsed0 = float(self.state.get("elapsed") or 0.0)
        self.reason: str | None = None
        self.train_loss: float | None = None
        self.rng = capture_rng()
        self.sync_flags = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.now_elapsed = self.elapsed0

    def _elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.started

    def _progress_bar(self):
        cfg, s = self.cfg, self.state
        progress = (sys.stderr.isatty() if cfg.progress is None else cfg.progress) and self.dist.is_main
        desc = "train" + (" mmi" if cfg.mmi else "")
        self.by_time = cfg.time_limit is not None  # the clock, not a step count, ends such a run: show it
        if self.by_time:
            return tqdm(total=round(cfg.time_limit), initial=min(round(float(s.get("elapsed") or 0)), round(cfg.time_limit)),
                        desc=desc, unit="s", disable=not progress, file=sys.stderr, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
        return tqdm(total=self.total_steps, initial=min(s["step"], self.total_steps), desc=desc, unit="step",
                    disable=not progress, file=sys.stderr, dynamic_ncols=True)

    def _run_epoch(self, bar, interrupt: "StopSignals") -> None:
        """The steps left in the current epoch (or a stop reason), then the epoch's evaluation."""
        cfg, s = self.cfg, self.state
        if cfg.max_steps is None and s["epoch"] >= cfg.epochs:
            self.reason = "completed"
            return
        plan = self._plan(s["epoch"])
        steps = group_steps(len(plan), self.per_step)
        while s["epoch_step"] < len(steps):
            self.reason = self._stop_reason(interrupt)
            self.rng = capture_rng()  # the state at this step boundary
            if self.reason:
                return
            self._step(plan, steps[s["epoch_step"]], bar)
            if cfg.eval_every and s["step"] % cfg.eval_every == 0 and s["epoch_step"] < len(steps):
                s["elapsed"] = self._elapsed()
                self.eval_and_save(capture_rng())
                self._check_patience()
        s["epoch"] += 1
        s["epoch_step"] = 0
        s["elapsed"] = self._elapsed()
        self.eval_and_save(capture_rng())
        self._check_patience()

    def _stop_reason(self, interrupt: "StopSignals") -> str | None:
        """Why the run stops before the next step, if it does."""
        cfg, s, flags = self.cfg, self.state, self.sync_flags
        if cfg.max_steps is not None and s["step"] >= cfg.max_steps:
            return "completed"
        if s.get("early_stopped"):
            return "early stopping"
        if cfg.stop_after_steps is not None and s["step"] >= cfg.stop_after_steps:
            return "stop_after_steps"
        # signals and the clock: every rank acts on the same values
        flags[0] = float(interrupt.requested)
        flags[1] = self._elapsed()
        self.dist.max_(flags)
        self.now_elapsed = float(flags[1])
        if flags[0]:
            return "interrupted"
        if cfg.time_limit is not None and self.now_elapsed >= cfg.time_limit:
            return "time limit"
        return None

    def _step(self, plan, slots, bar) -> None:
        """One optimiser step, the progress bar and (every log_every steps) a metrics line."""
        s = self.state
        t0 = time.perf_counter()
        loss_sum, targets, lr = self._train_step(plan, slots, self.now_elapsed, self.counters)
        self.counters["seconds"] += time.perf_counter() - t0
        self.interval[0] += loss_sum
        self.interval[1] += targets
        s["step"] += 1
        s["epoch_step"] += 1
        if self.by_time:
            bar.update(min(self._elapsed(), self.cfg.time_limit) - bar.n)
            bar.set_postfix(self.post | {"step": s["step"]}, refresh=False)
        else:
            bar.update(1)
        if s["step"] % self.cfg.log_every == 0:
            self._log_interval(lr, bar)

    def _log_interval(self, lr: float, bar) -> None:
        """Train loss and throughput over the steps since the last line (all ranks'), to metrics.jsonl."""
        dist, s, interval = self.dist, self.state, self.interval
        dist.sum_(interval)
        self.train_loss = train_loss = float(interval[0] / interval[1]) if interval[1] > 0 else None
        now = time.perf_counter()
        tokens = torch.tensor([self.counters["useful"] - self.interval_tokens], dtype=torch.float64, device=self.device)
        dist.sum_(tokens)
        tps = float(tokens) / max(now - self.interval_start, 1e-9)
        self.interval_start, self.interval_tokens = now, self.counters["useful"]
        interval.zero_()
        if dist.is_main and train_loss is not None:
            append_metrics(self.out, {"type": "train", "step": s["step"], "epoch": s["epoch"], "loss": train_loss,
                                      "lr": lr, "tokens_per_s": round(tps, 1), "elapsed": round(self._elapsed(), 2)})
        self.post = {"loss": f"{train_loss:.3f}" if train_loss else "-", "lr": f"{lr:.2e}", "tok_s": f"{tps:,.0f}"}
        bar.set_postfix(self.post | ({"step": s["step"]} if self.by_time else {}), refresh=False)

    def _save_at_end(self) -> None:
        """last/ (and best/) as the stop reason asks."""
        s = self.state
        s["elapsed"] = self._elapsed()
        if self.reason == "interrupted":
            self.model.zero_grad(set_to_none=True)
            self.save_checkpoint(self.rng)
        elif self.reason == "stop_after_steps":
            self.save_checkpoint(capture_rng())
        else:
            final_rng = capture_rng()
            if s.get("last_eval_step") != s["step"]:
                self.eval_and_save(final_rng)
            if not self.valid_plan:
                self.save_best()

    def _check_patience(self) -> None:
        s, p = self.state, self.cfg.patience
        if p is not None and s["best_valid_loss"] is not None and s["bad_evals"] >= p:
            s["early_stopped"] = True

    def _train_step(self, plan, slots, elapsed: float, counters: dict):
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
    check_config(cfg)
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
            trainer.setup_training()
            return trainer.run()
    finally:
        torch.set_num_threads(threads)
        dist.close()
