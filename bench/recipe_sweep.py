"""The evidence behind the default model's size and learning rates: the recipe's training stages for
several model configurations at once on one machine (a GPU: the variants share it), each sized to the
same time budget, scored by per-character perplexity on CPED valid.

    chitchat default-model --until preprocess          # here: vocab and datasets into runs/recipe
    python bench/recipe_sweep.py --work runs/recipe --out runs/sweep --device cuda   # 358 s on one H200

1. probe: each variant's pre-training runs for --probe seconds (all at once, as they will run) to
   measure its steps per second;
2. pre-training steps = that rate x --budget (at most --max-epochs over the pre-training set), then
   each variant runs the recipe itself (`run_recipe(..., until="train")`: pretrain, dialogue, mmi) with
   those fixed steps, all variants at once (pre-training also gets a safety --time-limit of 1.3 x the
   budget, which only shapes the first warm-up steps when the steps finish in time); a second chitchat
   stage at another learning rate reuses its pre-training;
3. every dialogue model's per-character perplexity on the validation file (teacher-forced, all cases);
   the best is exported (fp16) with its run records into --out/pack (split into parts of at most
   15 MiB, to carry back: `cat pack.tar.gz.* | tar xz`).

The last line is one JSON object: {"variants": [...], "best": name, "perplexity_char": ...}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from chitchat.eval.evaluate import char_perplexity  # noqa: E402
from chitchat.recipe.recipe import MACHINE, RecipeConfig, StageConfig, export_model, run_recipe, train_config  # noqa: E402
from chitchat.training.trainer import train as train_run  # noqa: E402

# name -> (model config, pre-training lr); every variant pre-trains with the same batch
VARIANTS = {
    "4x128": ({"n_layer": 4, "n_embd": 128, "n_head": 4}, 3e-3),
    "6x256": ({"n_layer": 6, "n_embd": 256, "n_head": 4}, 2e-3),
    "8x256": ({"n_layer": 8, "n_embd": 256, "n_head": 4}, 2e-3),
    "8x256-drop": ({"n_layer": 8, "n_embd": 256, "n_head": 4, "resid_pdrop": 0.1, "embd_pdrop": 0.1,
                    "attn_pdrop": 0.1}, 2e-3),
    "12x192": ({"n_layer": 12, "n_embd": 192, "n_head": 4}, 2e-3),
}
FINETUNE_LRS = (1e-3, 3e-4)  # the chitchat stages (dialogue and mmi) of each variant
PREP = ("vocab", "preprocess-pretrain", "preprocess-chitchat", "preprocess-valid")


def variant_config(base: RecipeConfig, name: str, work: Path, args) -> RecipeConfig:
    conf, lr = VARIANTS[name]
    return replace(base, work=work, output=work / "model", device=args.device, progress=False,
                   threads=2 if args.device and args.device.startswith("cuda") else None,
                   model_config={**conf, "n_positions": base.max_len},
                   pretrain=StageConfig(steps=1, lr=lr, batch_tokens=args.batch_tokens))


def link_prepared(src: Path, work: Path) -> None:
    """A variant's work directory: the prepared datasets of `src` (linked) and their stages marked done."""
    work.mkdir(parents=True, exist_ok=True)
    for name in ("data", "vocab.txt"):
        if not (work / name).exists():
            (work / name).symlink_to((src / name).resolve())
    log = json.loads((src / "stages.json").read_text(encoding="utf-8"))
    (work / "stages.json").write_text(json.dumps({k: log[k] for k in PREP}, indent=2), encoding="utf-8")


def probe(cfg: RecipeConfig, seconds: float, out: Path) -> None:
    """Pre-training for `seconds`: metrics.jsonl gives the steps per second."""
    stage = replace(cfg.pretrain, steps=10 ** 6, eval_every=10 ** 6, time_limit=seconds)
    run = train_config(cfg, stage, cfg.work / "data" / "pretrain", out, mmi=False, init_from=None)
    shutil.rmtree(out, ignore_errors=True)
    train_run(replace(run, resume=False, log_every=5))


def steps_per_second(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    rows = rows[len(rows) // 4:]  # after the warm-up
    if len(rows) < 2:
        s = json.loads((run / "summary.json").read_text())
        return s["step"] / s["elapsed"]
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["elapsed"] - rows[0]["elapsed"])


def train(cfg: RecipeConfig, log: Path) -> None:
    with open(log, "w", encoding="utf-8") as f:
        sys.stdout = sys.stderr = f
        run_recipe(cfg, say=lambda text: print(text, flush=True), until="train")


def finetune_again(cfg: RecipeConfig, pre: Path, log: Path, deadline: float) -> None:
    """The chitchat stages at another learning rate, from the same pre-training, once it is done."""
    while True:
        done = json.loads((pre / "stages.json").read_text(encoding="utf-8")).get("pretrain", {}).get("done")
        if done:
            break
        if time.time() > deadline:
            sys.exit(f"{pre}: no pre-training by the deadline")
        time.sleep(2)
    runs = cfg.work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    if not (runs / "pretrain").exists():
        (runs / "pretrain").symlink_to((pre / "runs" / "pretrain").resolve())
    stages = json.loads((cfg.work / "stages.json").read_text(encoding="utf-8"))
    stages["pretrain"] = json.loads((pre / "stages.json").read_text(encoding="utf-8"))["pretrain"]
    (cfg.work / "stages.json").write_text(json.dumps(stages, indent=2), encoding="utf-8")
    train(cfg, log)


def start(target, *a) -> mp.Process:
    p = mp.get_context("spawn").Process(target=target, args=a)
    p.start()
    return p


def join_all(procs: dict[str, mp.Process]) -> dict[str, int]:
    for p in procs.values():
        p.join()
    return {k: p.exitcode for k, p in procs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a recipe work directory after `--until preprocess`")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--corpora", type=Path, default=None, help="folder holding the validation file (default: the recipe's)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--device", default=None)
    ap.add_argument("--budget", type=float, default=220, help="seconds of pre-training per variant (all at once)")
    ap.add_argument("--probe", type=float, default=25, help="seconds of the throughput probe")
    ap.add_argument("--batch-tokens", type=int, default=32768, help="pre-training batch (positions per step)")
    ap.add_argument("--max-epochs", type=float, default=8)
    ap.add_argument("--min-steps", type=int, default=20)
    ap.add_argument("--finetune-steps", type=int, default=None, help="steps of each chitchat stage (default: the recipe's)")
    ap.add_argument("--eval-limit", type=int, default=None, help="score the first N validation cases (default: all)")
    args = ap.parse_args()
    args.out = args.out.resolve()
    t0 = time.time()
    base = RecipeConfig() if args.corpora is None else replace(RecipeConfig(), corpora=args.corpora)
    args.out.mkdir(parents=True, exist_ok=True)
    works = {n: args.out / n for n in args.variants}
    cfgs = {}
    for n, w in works.items():
        link_prepared(args.work, w)
        cfgs[n] = variant_config(base, n, w, args)

    # 1. throughput, every variant at once
    codes = join_all({n: start(probe, cfgs[n], args.probe, args.out / "probe" / n) for n in cfgs})
    rates = {n: steps_per_second(args.out / "probe" / n) for n in cfgs if codes[n] == 0}
    print(f"probe ({time.time() - t0:.0f} s): " + ", ".join(f"{n} {r:.2f} steps/s" for n, r in rates.items()), flush=True)
    manifest = json.loads((args.work / "data" / "pretrain" / "manifest.json").read_text(encoding="utf-8"))
    epoch_steps = manifest["counts"]["tokens"] / args.batch_tokens
    plan = {}
    for n, r in rates.items():
        steps = int(min(r * args.budget, args.max_epochs * epoch_steps))
        steps = max(args.min_steps, steps // 10 * 10)
        plan[n] = steps
        cfgs[n] = replace(cfgs[n], pretrain=replace(cfgs[n].pretrain, steps=steps, eval_every=max(1, steps // 6),
                                                    time_limit=round(args.budget * 1.3)))
    print("plan: " + json.dumps(plan), flush=True)

    # 2. the recipe's training stages, every variant at once; the chitchat stages at the second learning
    #    rate start as soon as their variant's pre-training is done
    t1 = time.time()
    lr_a, lr_b = FINETUNE_LRS
    if args.finetune_steps:
        cfgs = {n: replace(c, dialogue=replace(c.dialogue, steps=args.finetune_steps),
                           mmi=replace(c.mmi, steps=args.finetune_steps)) for n, c in cfgs.items()}
    first = {n: replace(c, dialogue=replace(c.dialogue, lr=lr_a), mmi=replace(c.mmi, lr=lr_a)) for n, c in cfgs.items() if n in rates}
    second = {}
    for n, c in first.items():
        w = args.out / f"{n}-ft{lr_b:g}"
        link_prepared(args.work, w)
        second[f"{n}-ft{lr_b:g}"] = (replace(c, work=w, output=w / "model", dialogue=replace(c.dialogue, lr=lr_b),
                                             mmi=replace(c.mmi, lr=lr_b)), c.work)
    deadline = time.time() + args.budget * 1.5 + 60
    procs = {n: start(train, first[n], args.out / f"{n}.log") for n in first}
    procs |= {n: start(finetune_again, c, pre, args.out / f"{n}.log", deadline) for n, (c, pre) in second.items()}
    codes = join_all(procs)
    print(f"trained ({time.time() - t1:.0f} s): {codes}", flush=True)

    # 3. score every dialogue model: teacher-forced per-character perplexity, every case
    valid = str(base.corpora / base.valid_source.path)
    scoring = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    results = []
    for name, c in [*((n, first[n]) for n in first if codes[n] == 0),
                    *((n, c) for n, (c, _) in second.items() if codes[n] == 0)]:
        runs = c.work / "runs"
        summ = {k: json.loads((runs / k / "summary.json").read_text(encoding="utf-8")) for k in ("pretrain", "dialogue", "mmi")}
        try:
            ppl, cases = char_perplexity(runs / "dialogue" / "best", [valid], limit=args.eval_limit, device=scoring)
        except Exception as e:  # noqa: BLE001  the GPU path failing must not lose the runs: the CPU scores them
            print(f"{name}: scoring on {scoring} failed ({e!r}); on the CPU", flush=True)
            scoring = "cpu"
            ppl, cases = char_perplexity(runs / "dialogue" / "best", [valid], limit=args.eval_limit, device=scoring)
        row = {"name": name, "model": c.model_config, "params": summ["dialogue"]["params"],
               "pretrain_lr": c.pretrain.lr, "pretrain_steps": summ["pretrain"]["step"],
               "pretrain_tokens": summ["pretrain"]["tokens_seen"], "pretrain_seconds": round(summ["pretrain"]["elapsed"], 1),
               "pretrain_tokens_per_s": round(summ["pretrain"]["tokens_seen"] / summ["pretrain"]["elapsed"]),
               "pretrain_stop": summ["pretrain"]["stop_reason"], "pretrain_valid_loss": summ["pretrain"]["best_valid_loss"],
               "finetune_lr": c.dialogue.lr, "dialogue_best_step": summ["dialogue"]["best_step"],
               "dialogue_valid_loss": summ["dialogue"]["best_valid_loss"], "mmi_valid_loss": summ["mmi"]["best_valid_loss"],
               "perplexity_char": round(ppl, 2), "cases": cases}
        results.append(row)
        print(json.dumps(row), flush=True)
    best = min(results, key=lambda r: r["perplexity_char"])
    c = first.get(best["name"]) or second[best["name"]][0]

    # 4. the best one, to carry back: exported models and the recipe's records of its stages
    pack = args.out / "pack"
    shutil.rmtree(pack, ignore_errors=True)
    stage = pack / "work"
    for k in ("pretrain", "dialogue", "mmi"):
        src, dst = (c.work / "runs" / k).resolve(), stage / "runs" / k
        dst.mkdir(parents=True)
        for f in ("summary.json", "train_config.json", "metrics.jsonl", "loss.png", MACHINE):
            if (src / f).is_file():
                shutil.copy2(src / f, dst / f)
    log = json.loads((c.work / "stages.json").read_text(encoding="utf-8"))
    (stage / "stages.json").write_text(json.dumps(log, indent=2), encoding="utf-8")
    for k in ("dialogue", "mmi"):
        export_model(c.work / "runs" / k / "best", pack / "model" / k)
    report = {"variants": results, "best": best["name"], "perplexity_char": best["perplexity_char"],
              "plan_steps": plan, "rates_steps_per_s": rates, "budget_s": args.budget, "batch_tokens": args.batch_tokens,
              "recipe": {"model_config": c.model_config, "pretrain": vars(c.pretrain), "dialogue": vars(c.dialogue),
                         "mmi": vars(c.mmi)}, "seconds": round(time.time() - t0, 1)}
    (pack / "sweep.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    for n in [*first, *second]:  # every variant's logs and records (the weights of the best alone)
        if (args.out / f"{n}.log").is_file():
            (pack / "variants" / n).mkdir(parents=True)
            shutil.copy2(args.out / f"{n}.log", pack / "variants" / n / "log.txt")
            for k in ("pretrain", "dialogue", "mmi"):
                for f in ("summary.json", "metrics.jsonl"):
                    if (args.out / n / "runs" / k / f).is_file():
                        shutil.copy2(args.out / n / "runs" / k / f, pack / "variants" / n / f"{k}_{f}")
    subprocess.run(f"tar czf {args.out}/pack.tar.gz -C {pack} . && split -b 15m -d {args.out}/pack.tar.gz "
                   f"{args.out}/pack.tar.gz.", shell=True, check=True)
    os.remove(args.out / "pack.tar.gz")
    print(json.dumps({k: report[k] for k in ("best", "perplexity_char", "seconds")} |
                     {"variants": [{k: r[k] for k in ("name", "params", "pretrain_steps", "pretrain_tokens_per_s",
                                                      "perplexity_char")} for r in results]}))


if __name__ == "__main__":
    main()
