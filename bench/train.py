"""Training throughput: the `small` preset on the shared corpora (LCCC toy train + KdConv dev).

Prints useful (non-padding) tokens per second, the padding fraction, and the model FLOPs
utilisation against this machine's fp32 matmul peak, measured here with torch.mm on large square
matrices (best of several sizes and repetitions, same thread count as the training). The last
line is one JSON object:

    {"bench": "train", "useful_tokens_per_s": ..., "padding_fraction": ..., "mfu": ...}

FLOPs per step (chitchat.training.report.training_flops): 6·N·tokens + 6·n_layer·d·Σℓ², N = the parameters
of the transformer blocks, the final layer norm and the LM head matmul (embedding lookups
excluded), tokens = non-padding positions, ℓ = each window's length (causal attention: QKᵀ and
AV cost 4·d per visible pair, ℓ²/2 pairs, ×3 for forward + backward). Padding is not counted.

    .venv/bin/python bench/train.py [--steps 40] [--batch-tokens 4096] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "corpora"


def matmul_peak(threads: int, sizes=(1024, 1536, 2048), seconds: float = 1.0) -> float:
    """Best fp32 torch.mm FLOP/s over a few square sizes."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = 0.0
    try:
        for n in sizes:
            a, b = torch.randn(n, n), torch.randn(n, n)
            torch.mm(a, b)
            reps, start = 0, time.perf_counter()
            while True:
                t = time.perf_counter()
                torch.mm(a, b)
                best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
                reps += 1
                if time.perf_counter() - start > seconds and reps >= 3:
                    break
    finally:
        torch.set_num_threads(previous)
    return best


def build_dataset(out: Path) -> Path:
    from chitchat.tokens.preprocess import PreprocessConfig, preprocess

    inputs = [str(SHARED / "lccc_toy" / "train.json"), str(SHARED / "kdconv")]
    preprocess(PreprocessConfig(inputs=inputs, output=out, progress=False))
    return out


def main(argv=None) -> int:
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="optimiser steps to time (default 40)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="positions per micro-batch (default 4096)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    p.add_argument("--preset", default="small")
    p.add_argument("--data", type=Path, default=None, help="a dataset directory (default: preprocess the shared corpora)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-config", default="{}", metavar="JSON",
                   help='GPT2Config overrides, e.g. \'{"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}\'')
    args = p.parse_args(argv)

    if args.data is None and not SHARED.is_dir():
        print(f"bench/train.py: {SHARED} is absent (the shared corpora live beside the project)", file=sys.stderr)
        return 2
    from chitchat.training.config import TrainConfig
    from chitchat.training.trainer import train

    work = Path(tempfile.mkdtemp(prefix="chitchat-bench-train-"))
    try:
        data = args.data or build_dataset(work / "data")
        peak_before = matmul_peak(args.threads) if args.device == "cpu" else None
        cfg = TrainConfig(data=data, output=work / "run", preset=args.preset, max_steps=args.steps,
                          model_config=json.loads(args.model_config),
                          batch_tokens=args.batch_tokens, num_threads=args.threads, device=args.device,
                          eval_every=None, patience=None, progress=False, verbose=False, log_every=5)
        train(cfg)
        s = json.loads((work / "run" / "summary.json").read_text())
        peak = max(peak_before, matmul_peak(args.threads)) if peak_before is not None else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    achieved = s["model_flops"] / s["train_seconds"]
    mfu = achieved / peak if peak else None
    print(f"{args.preset}: {s['matmul_params'] / 1e6:.2f} M matmul parameters, {s['step']} steps of "
          f"{args.batch_tokens} positions, {args.threads} threads")
    print(f"useful tokens/s {s['useful_tokens_per_s']:,.0f}   padding {100 * s['padding_fraction']:.2f}%   "
          f"{achieved / 1e9:.1f} GFLOP/s of a measured {peak / 1e9 if peak else float('nan'):.1f} GFLOP/s fp32 "
          f"matmul peak: MFU {100 * mfu if mfu else float('nan'):.1f}%")
    print(json.dumps({"bench": "train", "useful_tokens_per_s": round(s["useful_tokens_per_s"], 1),
                      "padding_fraction": round(s["padding_fraction"], 4),
                      "mfu": round(mfu, 4) if mfu is not None else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
