"""Per-source ablation of the open corpora (issue 19, item 4), on the CPU.

Which of the new sources of ../shared/corpora/open/ help the dev figure? Each variant continues the
fine-tuning of the shipped dialogue model (`chitchat train --init-from models/default/dialogue`) for
the same fixed number of optimiser steps (same seed, same peak lr as the recipe's dialogue stage,
a short warm-up, the trainer's default batch), on

    base        the recipe's chitchat sources alone (CPED train, XPersona, KdConv, ChatterBot)
    base+X      the same plus a capped, seeded sample of the new source X

and is scored by the recipe's teacher-forced per-character perplexity (`char_perplexity`) on
open/cped_valid.jsonl, as is the shipped model itself (0 extra steps). Every added source is cut
to at most `--cap` characters (whole dialogues drawn in a seeded order) so that a large corpus does
not swamp the chitchat mix. Data is preprocessed with the shipped model's own tokenizer, so ids
match; the [UNK] share of each added source is reported.

Steps, not a time limit, make the variants comparable on a shared, noisy CPU; `--time-limit` is a
safety net only (a variant it stops is marked). cped_valid.jsonl is never trained on; LCCC never
enters. Work (samples, datasets, runs) goes under --work (runs/ is git-ignored); a rerun skips the
variants whose run and score are already there.

    nice -n 15 .venv/bin/python bench/source_ablation.py --corpora ../shared/corpora --steps 50 \
        --cap 520000 --eval-limit 300 --output bench/results/source_ablation_cpu.json

(the defaults are these settings, those of bench/results/source_ablation_cpu.json: about an hour on
2 shared CPU cores; models/default/SOURCE_ABLATION.md reads the figures).

The last line printed is one JSON object: per variant the perplexity, its delta against `base`,
steps, tokens and seconds.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The recipe's chitchat sources (chitchat/recipe/recipe.py, RecipeConfig.chitchat_sources), relative to --corpora.
BASE = ("open/cped_train.jsonl", "open/xpersona_zh_train.jsonl", "kdconv", "chatterbot:chinese")
# The sources issue 19 adds to open/; each is tried on top of BASE, one at a time.
NEW = ("smile_rest.jsonl.xz", "emollm.jsonl.xz", "cpsycoun.jsonl.xz", "crosswoz.jsonl.xz",
       "multiwoz_zh.jsonl.xz", "xiaoai_pairs.jsonl.xz")
VALID = "open/cped_valid.jsonl"  # validation only: scored on, never trained on
FORBIDDEN = ("cped_valid", "lccc")   # names that must never reach a training set


def _open(path: Path):
    return lzma.open(path, "rt", encoding="utf-8") if path.suffix == ".xz" else path.open(encoding="utf-8")


def sample_source(path: Path, cap: int, seed: int, dest: Path) -> dict:
    """At most `cap` characters of whole dialogues of a JSON-lines corpus, drawn in a seeded order,
    written as JSON lines to `dest` (cap 0: everything). Returns the counts before and after."""
    dialogs = []
    with _open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                d = [u for u in json.loads(line)["dialog"] if isinstance(u, str) and u.strip()]
                if len(d) >= 2:
                    dialogs.append(d)
    total_chars = sum(len(u) for d in dialogs for u in d)
    order = list(range(len(dialogs)))
    random.Random(seed).shuffle(order)
    kept, chars = [], 0
    for k in order:
        n = sum(len(u) for u in dialogs[k])
        if cap and chars + n > cap:
            continue  # a long dialogue is skipped; shorter ones may still fit
        kept.append(dialogs[k])
        chars += n
        if cap and chars >= cap * 0.999:
            break
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".partial")
    with tmp.open("w", encoding="utf-8") as f:
        for d in kept:
            f.write(json.dumps({"dialog": d}, ensure_ascii=False) + "\n")
    tmp.rename(dest)
    return {"dialogues": len(dialogs), "chars": total_chars, "sampled_dialogues": len(kept), "sampled_chars": chars}


SRC = ROOT  # the folder holding the `chitchat` package to run (--src)


def chitchat(argv: list[str], log: Path) -> float:
    """Run one `python -m chitchat` command (the CLI, not its internals), output into `log`; seconds."""
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with log.open("w", encoding="utf-8") as out:
        out.write("$ chitchat " + " ".join(argv) + "\n")
        out.flush()
        code = subprocess.call([sys.executable, "-m", "chitchat", *argv], cwd=SRC, env=env, stdout=out,
                               stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"chitchat {argv[0]} failed (exit {code}); see {log}")
    return time.time() - t0


def score(model_dir: Path, valid: Path, limit: int | None) -> tuple[float, int, float]:
    """(per-character perplexity, cases, seconds) of a model on the validation file: the recipe's measure."""
    try:
        from chitchat.eval.evaluate import char_perplexity
    except ImportError:  # the package is being restructured: the function may have moved
        from chitchat.eval import char_perplexity
    t0 = time.time()
    ppl, cases = char_perplexity(model_dir, [str(valid)], limit=limit)
    return ppl, cases, time.time() - t0


def markdown_table(doc: dict) -> str:
    """The results as the Markdown table of models/default/SOURCE_ABLATION.md."""
    rows = ["| variant | added (sampled of total) | [UNK] share of added | steps | tokens | train s | ppl/char | vs base |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, v in doc["variants"].items():
        a = v.get("added")
        added = (f"{a['sampled_dialogues']:,} of {a['dialogues']:,} dialogues, {a['sampled_chars'] / 1e6:.2f}M of "
                 f"{a['chars'] / 1e6:.2f}M chars") if a else ("none (0 extra steps)" if name == "shipped" else "none")
        unk = f"{a['unk_share']:.4%}" if a and a.get("unk_share") is not None else "-"
        delta = v.get("delta_vs_base")
        rows.append(f"| {name} | {added} | {unk} | {v['steps']} | {v['tokens']:,} | {v['train_seconds']:.0f} | "
                    f"{v['ppl_char']:.2f} | {'-' if delta is None or name == 'base' else f'{delta:+.2f}'} |")
    return "\n".join(rows)


def _package_version(src: Path) -> str:
    """The commit of the checkout the package comes from (an exported snapshot: its COMMIT file)."""
    if (src / "COMMIT").is_file():
        return "snapshot of " + (src / "COMMIT").read_text(encoding="utf-8").strip()
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() if (src / ".git").exists() else "snapshot"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--corpora", type=Path, default=ROOT.parent / "shared" / "corpora")
    ap.add_argument("--steps", type=int, default=50, help="optimiser steps per variant (the same for all)")
    ap.add_argument("--cap", type=int, default=520_000, help="characters per added source (0: no cap); "
                    "the default is about the size of the chitchat sources (518,898 characters)")
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "source_ablation_cpu.json")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "source_ablation")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default" / "dialogue", help="model to continue from")
    ap.add_argument("--sources", nargs="*", default=list(NEW), help="files of CORPORA/open/ to add, one per variant")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak lr (the recipe's dialogue stage)")
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-limit", type=int, default=300, help="validation cases to score, the first N "
                    "(the recipe guard's 300; 0: all 1,660, about 2 minutes a model on a loaded CPU)")
    ap.add_argument("--src", type=Path, default=ROOT, help="folder holding the chitchat package to run: the checkout, "
                    "or a snapshot of a commit (`git archive HEAD chitchat | tar -x -C DIR; git rev-parse HEAD > DIR/COMMIT`) while the checkout is being edited")
    ap.add_argument("--table", action="store_true", help="only print the Markdown table of --output")
    ap.add_argument("--time-limit", type=float, default=1500, help="safety net per variant, seconds of training")
    args = ap.parse_args(argv)

    if args.table:
        print(markdown_table(json.loads(args.output.read_text(encoding="utf-8"))))
        return 0
    global SRC
    SRC = args.src.resolve()
    sys.path.insert(0, str(SRC))  # char_perplexity from the same package the CLI runs
    import torch

    torch.set_num_threads(args.threads)
    started = time.time()
    corpora, work = args.corpora.resolve(), args.work.resolve()
    valid = corpora / VALID
    limit = args.eval_limit or None
    for s in args.sources:
        if any(bad in s.lower() for bad in FORBIDDEN):
            raise SystemExit(f"{s}: validation or research-only data is never trained on")
    base_inputs = [s if s.startswith("chatterbot:") else str(corpora / s) for s in BASE]

    result_path = work / "results.json"
    done: dict = json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file() else {}
    settings = {"model": str(args.model.relative_to(ROOT) if args.model.resolve().is_relative_to(ROOT) else args.model),
                "steps": args.steps, "cap_chars": args.cap, "lr": args.lr, "warmup_steps": args.warmup_steps,
                "seed": args.seed, "threads": args.threads, "schedule": "cosine (trainer default)",
                "batch": "trainer default (auto, at most 4096 positions)", "valid": VALID,
                "eval_cases": "all" if limit is None else limit, "base": list(BASE),
                "package": _package_version(SRC)}
    if done.get("settings") != settings:
        done = {"settings": settings, "variants": {}}

    def save() -> None:
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(done, ensure_ascii=False, indent=2), encoding="utf-8")

    variants = done["variants"]
    if "shipped" not in variants:
        ppl, cases, sec = score(args.model, valid, limit)
        variants["shipped"] = {"added": None, "ppl_char": ppl, "cases": cases, "steps": 0, "tokens": 0,
                               "train_seconds": 0.0, "eval_seconds": round(sec, 1)}
        save()
        print(f"shipped: ppl {ppl:.3f} on {cases} cases ({sec:.0f} s)", flush=True)

    plan = [("base", None)] + [("base+" + s.split(".")[0], s) for s in args.sources]
    for name, src in plan:
        if name in variants:
            print(f"{name}: done before, ppl {variants[name]['ppl_char']:.3f}", flush=True)
            continue
        vdir = work / name
        vdir.mkdir(parents=True, exist_ok=True)
        inputs, added = list(base_inputs), None
        if src is not None:
            sample = work / "samples" / f"{src.split('.')[0]}.jsonl"
            added = {"file": f"open/{src}", **sample_source(corpora / "open" / src, args.cap, args.seed, sample)}
            inputs.append(str(sample))
        data = vdir / "data"
        prep_sec = chitchat(["preprocess", *inputs, "--vocab", str(args.model), "--output", str(data), "--max-len", "256",
                             "--seed", str(args.seed), "--valid-count", "1", "--no-progress"], vdir / "preprocess.log")
        manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
        counts = manifest["counts"]
        run = vdir / "run"
        train_sec = chitchat(["train", "--data", str(data), "--output", str(run), "--init-from", str(args.model),
                              "--max-steps", str(args.steps), "--lr", str(args.lr), "--warmup-steps", str(args.warmup_steps),
                              "--seed", str(args.seed), "--threads", str(args.threads), "--patience", "0",
                              "--eval-every", str(10 ** 6), "--time-limit", str(args.time_limit), "--no-progress"],
                             vdir / "train.log")
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        ppl, cases, eval_sec = score(run / "last", valid, limit)
        variants[name] = {
            "added": added, "ppl_char": ppl, "cases": cases, "steps": summary["step"],
            "stop_reason": summary.get("stop_reason"), "tokens": summary["tokens_seen"],
            "dataset_tokens": counts["utterance_tokens"], "dataset_windows": counts["windows"],
            "unk_tokens": counts["unk_tokens"], "unk_rate": counts["unk_rate"],
            "train_loss": summary.get("train_loss"), "train_seconds": round(summary["elapsed"], 1),
            "wall_seconds": round(prep_sec + train_sec + eval_sec, 1), "eval_seconds": round(eval_sec, 1),
        }
        save()
        print(f"{name}: ppl {ppl:.3f} on {cases} cases, {summary['step']} steps, {summary['tokens_seen']:,} tokens, "
              f"{summary['elapsed']:.0f} s training", flush=True)

    base = variants["base"]
    base_unk = base["unk_tokens"]
    for name, v in variants.items():
        v["delta_vs_base"] = v["ppl_char"] - base["ppl_char"]
        if v.get("added"):  # base has its own [UNK]s too: the added source's share is the difference
            new_tokens = v["dataset_tokens"] - base["dataset_tokens"]
            v["added"]["unk_share"] = (v["unk_tokens"] - base_unk) / new_tokens if new_tokens > 0 else None
    done["seconds"] = round(time.time() - started, 1)
    save()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(done, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(markdown_table(done))
    line = {name: {"ppl_char": round(v["ppl_char"], 3), "delta_vs_base": round(v["delta_vs_base"], 3), "steps": v["steps"],
                   "tokens": v["tokens"], "seconds": v.get("wall_seconds", v["eval_seconds"])}
            for name, v in variants.items()}
    print(json.dumps(line, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
