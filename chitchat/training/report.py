"""What a training run shows: metrics.jsonl, loss.png and the closing summary.

`metrics.jsonl` has one JSON object per line: `{"type": "train", "step", "epoch", "loss", "lr",
"tokens_per_s", ...}` every `log_every` steps (loss: mean over the interval's target tokens) and
`{"type": "valid", "step", "epoch", "loss", "ppl", "best"}` at each evaluation.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from chitchat.files import atomic_path, atomic_write

METRICS = "metrics.jsonl"
PLOT = "loss.png"
SUMMARY = "summary.json"


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return records


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records after `step` (a resumed run repeats those steps)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))


def plot_losses(run_dir: Path, title: str = "") -> Path | None:
    """loss.png: train and valid loss against steps (headless matplotlib); None without data."""
    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if r.get("type") == "train"]
    valid = [(r["step"], r["loss"]) for r in records if r.get("type") == "valid"]
    if not train and not valid:
        return None
    try:
        from matplotlib.figure import Figure  # heavy, only to plot; no pyplot: headless, no global backend change
    except ImportError:
        print("warning: matplotlib is not installed; no loss.png (pip install matplotlib)", file=sys.stderr)
        return None
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train", color="tab:blue", linewidth=1)
    if valid:
        ax.plot(*zip(*valid), label="valid", color="tab:orange", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / PLOT
    with atomic_path(out) as tmp:
        fig.savefig(tmp)
    return out


def write_summary(run_dir: Path, summary: dict) -> None:
    path = Path(run_dir) / SUMMARY
    atomic_write(path, json.dumps(summary, ensure_ascii=False, indent=2))


def _fmt_loss(loss) -> str:
    if loss is None:
        return "-"
    return f"{loss:.4f} (ppl {math.exp(min(loss, 50)):.2f})"


def summary_text(s: dict) -> str:
    lines = [
        f"{'MMI ' if s.get('mmi') else ''}model {s['model']} ({s['params'] / 1e6:.2f} M parameters) on {s['device']}"
        f"{' x ' + str(s['world_size']) if s.get('world_size', 1) > 1 else ''}",
        f"steps {s['step']} / {s['total_steps']}  epochs {s['epochs_done']:.2f}  stopped: {s['stop_reason']}",
        f"train loss {_fmt_loss(s.get('train_loss'))}   valid loss {_fmt_loss(s.get('valid_loss'))}",
        f"best valid loss {_fmt_loss(s.get('best_valid_loss'))} at step {s.get('best_step', '-')}",
        f"{s['useful_tokens']:,} useful tokens in {s['train_seconds']:.1f} s: {s['useful_tokens_per_s']:,.0f} tokens/s, "
        f"padding {100 * s['padding_fraction']:.1f}% of positions",
        f"best model: {s['best_dir']}",
        f"last checkpoint: {s['last_dir']}  (resume with --resume)",
        f"metrics: {s['metrics']}   plot: {s.get('plot') or '-'}",
    ]
    return "\n".join(lines)


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
