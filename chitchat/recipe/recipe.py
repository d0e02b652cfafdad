"""The recipe of the shipped default model, one command: `chitchat default-model` (`make default-model`).

Stages, each a `chitchat` command printed before it runs, each skipped when its output is complete,
so that a stopped run continues where it stopped (training stages resume from their last checkpoint):

    vocab        the character vocabulary of the training corpora (`chitchat vocab`)
    preprocess   three datasets: pre-training (SMILE), chitchat (CPED train, XPersona, KdConv, ChatterBot),
                 validation (CPED valid: other TV series; validated and reported on, never trained on)
    pretrain     a GPT-2 language model on the pre-training set: the language
    dialogue     the dialogue model: the pre-trained model fine-tuned on the chitchat set
    mmi          the MMI model: the pre-trained model fine-tuned on the reversed chitchat set
    export       best/ of dialogue and mmi into OUTPUT/dialogue and OUTPUT/mmi (fp16 safetensors)
    eval         `chitchat eval --compare-mmi` on CPED valid (all cases, seed 1)
    card         OUTPUT/TRAINED_ON.json (sources with SHA-256, stages, steps, tokens, times, figures)
                 and OUTPUT/README.md (the model card)

Everything is seeded; the training stages run a fixed number of steps, so a rerun on a CPU
computes the same weights. RecipeConfig holds every choice; `tests/recipe/test_recipe.py` runs the whole
recipe on tiny sources in seconds.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from chitchat.corpus.readers import chatterbot_files
from chitchat.errors import ChitchatError
from chitchat.eval import cli as eval_command
from chitchat.eval.evaluate import char_perplexity
from chitchat.files import REPO_ROOT, atomic_write, sha256_file
from chitchat.model.default import MANIFEST
from chitchat.model.gpt2 import load_model, save_model
from chitchat.options import add_options, option, options_from_args, run_command
from chitchat.tokens import preprocess as preprocess_command
from chitchat.tokens import vocab as vocab_command
from chitchat.training import cli as train_command
from chitchat.training.checkpoint import commit_dir, new_partial_dir, recover_dir

MACHINE = "machine.json"  # in each training run: the machine it trained on


@dataclass(frozen=True)
class Source:
    path: str     # relative to RecipeConfig.corpora, or `chatterbot:LANG`
    origin: str   # where it comes from: repository, commit, path
    licence: str


# The open corpora of ../shared/corpora (see its README). LCCC is research-only: never here.
SMILE = Source("open/smile_20k.jsonl", "qiuhuachuan/smile @ 9f8afc0, data/ (20,000 of 55,165 dialogues, fixed seed)",
               "CC0-1.0")
CPED_TRAIN = Source("open/cped_train.jsonl", "scutcyr/CPED @ 1e4b81c, data/CPED/test_split.csv", "Apache-2.0")
CPED_VALID = Source("open/cped_valid.jsonl", "scutcyr/CPED @ 1e4b81c, data/CPED/valid_split.csv", "Apache-2.0")
XPERSONA = Source("open/xpersona_zh_train.jsonl", "HLTCHKUST/Xpersona @ 1da049a, dataset/Zh_persona_split_valid_human_annotated.json",
                  "MIT")
KDCONV = Source("kdconv", "thu-coai/KdConv, data/{film,music,travel}/dev.json", "Apache-2.0")
CHATTERBOT = Source("chatterbot:chinese", "PyPI chatterbot-corpus (gunthercox/chatterbot-corpus), chatterbot_corpus/data/chinese/*.yml", "BSD-3-Clause")


@dataclass
class StageConfig:
    steps: int                      # the schedule's length (--max-steps)
    lr: float
    stop_after: int | None = None   # stop (and save) at this step, the schedule unchanged (--stop-after-steps)
    warmup_steps: int | None = None
    eval_every: int | None = None
    batch_tokens: int | None = None
    time_limit: float | None = None  # a safety net: the run ends, its LR decayed, after this many seconds


@dataclass
class RecipeConfig:
    output: Path = option(REPO_ROOT / "models" / "default", metavar="DIR",
                          help="where the model goes (dialogue/, mmi/, TRAINED_ON.json, README.md)")
    work: Path = option(REPO_ROOT / "runs" / "recipe", metavar="DIR",
                        help="datasets, training runs and the evaluation (a stopped run resumes here)")
    corpora: Path = option(REPO_ROOT.parent / "shared" / "corpora", metavar="DIR",
                           help="folder holding the open corpora (open/, kdconv/)")
    pretrain_sources: tuple[Source, ...] = (SMILE,)
    chitchat_sources: tuple[Source, ...] = (CPED_TRAIN, XPERSONA, KDCONV, CHATTERBOT)
    valid_source: Source = CPED_VALID
    vocab_size: int = 6000
    max_len: int = 256
    # 8 x 256 (7.9 M parameters), pre-trained on 62.7 M tokens (2 epochs of SMILE) in batches of 32,768
    # positions, the chitchat stages at lr 3e-4: the best of 10 variants of a sweep at equal time on one
    # GPU (bench/recipe_sweep.py; models/default/RECIPE_SWEEP.md).
    preset: str = "small"
    model_config: dict = field(default_factory=lambda: {"n_layer": 8, "n_embd": 256, "n_head": 4, "n_positions": 256})
    # the chitchat stages start from pre-training's last step; each keeps its best step on CPED valid
    pretrain: StageConfig = field(default_factory=lambda: StageConfig(steps=1950, lr=2e-3, eval_every=325, batch_tokens=32768))
    dialogue: StageConfig = field(default_factory=lambda: StageConfig(steps=600, lr=3e-4, warmup_steps=20, eval_every=50))
    mmi: StageConfig = field(default_factory=lambda: StageConfig(steps=150, lr=3e-4, warmup_steps=20, eval_every=50))
    seed: int = 1
    threads: int | None = option(None, metavar="N", help="CPU threads for training (none: every core)")
    device: str | None = option(None, help="training device: cpu, cuda, cuda:N (none: cuda if available, else cpu)")
    eval_limit: int | None = None   # None: every case of the validation file
    eval_negatives: int = 9         # coherence: distractors per case (chitchat eval --negatives)
    progress: bool | None = option(None, help="progress bars (none: only on a terminal)")


def source_files(cfg: RecipeConfig, src: Source) -> list[Path]:
    """The files of one source; a missing one is a one-line error naming it and its origin."""
    if src.path.startswith("chatterbot:"):
        return chatterbot_files(src.path)
    path = cfg.corpora / src.path
    if not path.exists():
        raise ChitchatError(f"missing corpus {path}: it comes from {src.origin} ({src.licence}); "
                            f"see ../shared/corpora/README.md, or point --corpora at the folder holding it")
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _inputs(cfg: RecipeConfig, sources) -> list[str]:
    return [s.path if s.path.startswith("chatterbot:") else str(cfg.corpora / s.path) for s in sources]


# the `chitchat` commands the stages run, in this process
STAGE_COMMANDS = {"vocab": vocab_command, "preprocess": preprocess_command, "train": train_command, "eval": eval_command}


def _run(argv: list[str], say) -> None:
    say("$ chitchat " + " ".join(shlex.quote(a) for a in argv))
    code = run_command(argv[0], STAGE_COMMANDS[argv[0]], argv[1:])
    if code:
        raise ChitchatError(f"stage failed (exit {code}): chitchat {' '.join(argv[:1])}")


def _train_done(run: Path, stage: StageConfig) -> bool:
    try:
        s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if stage.stop_after is not None and stage.stop_after < stage.steps:
        return s.get("step") == stage.stop_after and s.get("stop_reason") == "stop_after_steps"
    return s.get("step") == stage.steps and s.get("stop_reason") in ("completed", "early stopping")


def _train_argv(cfg: RecipeConfig, stage: StageConfig, data: Path, out: Path, *, mmi: bool,
                init_from: Path | None) -> list[str]:
    argv = ["train", "--data", str(data), "--valid-data", str(cfg.work / "data" / "valid"), "--output", str(out),
            "--max-steps", str(stage.steps), "--lr", str(stage.lr), "--seed", str(cfg.seed), "--resume",
            "--patience", str(10 ** 6)]
    if init_from is None:
        argv += ["--preset", cfg.preset]
        if cfg.model_config:
            conf = cfg.work / "model_config.json"
            conf.write_text(json.dumps(cfg.model_config), encoding="utf-8")
            argv += ["--config", str(conf)]
    else:
        argv += ["--init-from", str(init_from)]
    for flag, value in (("--stop-after-steps", stage.stop_after), ("--warmup-steps", stage.warmup_steps), ("--eval-every", stage.eval_every),
                        ("--batch-tokens", stage.batch_tokens), ("--time-limit", stage.time_limit), ("--threads", cfg.threads), ("--device", cfg.device)):
        if value is not None:
            argv += [flag, str(value)]
    if mmi:
        argv.append("--mmi")
    if cfg.progress is False:
        argv.append("--no-progress")
    return argv


def export_model(run_best: Path, dest: Path, *, fp16: bool = True) -> None:
    """A trained model into a clean Hugging Face directory, weights stored in fp16 (loaded as fp32);
    replaced as a whole, like a checkpoint (chitchat.training.checkpoint.commit_dir)."""
    model, tok = load_model(run_best)
    if fp16:
        model = model.to(torch.float16)
    recover_dir(dest)
    partial = new_partial_dir(dest)
    save_model(model, tok, partial)
    commit_dir(partial, dest)


def model_files(root: Path) -> dict[str, str]:
    """SHA-256 of every file of the shipped model's directories (dialogue/, mmi/), by path relative to root;
    the pages beside them (card, sweeps, ablations) are documents, free to change."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.parent != root}


STAGES = ("preprocess", "train", "export", "eval")


def run_recipe(cfg: RecipeConfig, say=print, until: str | None = None) -> dict | None:
    """The whole recipe, or its stages up to and including `until` (one of STAGES: `preprocess`
    prepares the datasets to train elsewhere, `train` stops before the export); None then."""
    if until is not None and until not in STAGES:
        raise ChitchatError(f"unknown stage {until!r} (choose from {', '.join(STAGES)})")
    started = time.time()
    work, out = Path(cfg.work), Path(cfg.output)
    work.mkdir(parents=True, exist_ok=True)
    (work / "data").mkdir(exist_ok=True)
    log_path = work / "stages.json"
    log: dict = json.loads(log_path.read_text(encoding="utf-8")) if log_path.is_file() else {}

    def timed(name: str, fn, target: str = "", present: bool = True) -> None:
        """Run a stage unless it finished before (for the same target, whose output is still `present`:
        export and eval write to OUTPUT)."""
        if name in log and log[name].get("done") and log[name].get("target", "") == target and present:
            say(f"[{name}] done before ({log[name]['seconds']:.0f} s), skipped")
            return
        t0 = time.time()
        before = log.get(name, {}).get("seconds_before", 0)  # the stage's time in runs that were stopped
        say(f"[{name}]")
        try:
            fn()
        except BaseException:  # a stopped stage: its time so far counts towards its total
            log[name] = {"done": False, "seconds_before": round(time.time() - t0 + before, 1)}
            atomic_write(log_path, json.dumps(log, indent=2))
            raise
        log[name] = {"done": True, "seconds": round(time.time() - t0 + before, 1), **({"target": target} if target else {})}
        atomic_write(log_path, json.dumps(log, indent=2))

    sources = {"pretrain": cfg.pretrain_sources, "chitchat": cfg.chitchat_sources, "valid": (cfg.valid_source,)}
    prepared = all(log.get(k, {}).get("done") for k in ("vocab", *(f"preprocess-{n}" for n in sources)))
    # every source is checked first, unless only training on prepared data is asked for (on another machine)
    files = {} if prepared and until == "train" else {s: source_files(cfg, s) for group in sources.values() for s in group}
    vocab = work / "vocab.txt"
    training = list(cfg.pretrain_sources) + list(cfg.chitchat_sources)
    timed("vocab", lambda: _run(["vocab", *_inputs(cfg, training), "--size", str(cfg.vocab_size), "--output",
                                 str(vocab)], say))
    for name, group in sources.items():
        dest = work / "data" / name
        split = ["--valid-count", "1"] if name == "valid" else ["--valid-count", "100"]

        def prep(dest=dest, group=group, split=split) -> None:
            shutil.rmtree(dest, ignore_errors=True)
            _run(["preprocess", *_inputs(cfg, group), "--vocab", str(vocab), "--output", str(dest),
                  "--max-len", str(cfg.max_len), "--seed", str(cfg.seed), *split], say)
        timed(f"preprocess-{name}", prep)
    if until == "preprocess":
        return None

    runs = work / "runs"
    plan = [("pretrain", cfg.pretrain, "pretrain", False, None),
            ("dialogue", cfg.dialogue, "chitchat", False, runs / "pretrain" / "last"),
            ("mmi", cfg.mmi, "chitchat", True, runs / "pretrain" / "last")]
    for name, stage, data, mmi, init in plan:
        run = runs / name

        def train_stage(run=run, stage=stage, data=data, mmi=mmi, init=init) -> None:
            if not _train_done(run, stage):
                _run(_train_argv(cfg, stage, work / "data" / data, run, mmi=mmi, init_from=init), say)
                (run / MACHINE).write_text(json.dumps(_machine(), indent=2), encoding="utf-8")
        timed(name, train_stage)
    if until == "train":
        return None

    def export() -> None:
        log.pop("eval", None)  # new weights: their figures are measured again
        out.mkdir(parents=True, exist_ok=True)
        for name in ("dialogue", "mmi"):
            export_model(runs / name / "best", out / name)
    exported = all((out / n / "config.json").is_file() for n in ("dialogue", "mmi"))
    timed("export", export, target=str(out.resolve()), present=exported)
    if until == "export":
        return None

    def evaluate() -> None:
        argv = ["eval", "--model", str(out / "dialogue"), "--mmi-model", str(out / "mmi"), "--compare-mmi",
                "--data", *_inputs(cfg, [cfg.valid_source]), "--output", str(work / "eval"), "--seed", str(cfg.seed)]
        if cfg.eval_limit:
            argv += ["--limit", str(cfg.eval_limit)]
        argv += ["--negatives", str(cfg.eval_negatives)]
        if cfg.progress is False:
            argv.append("--no-progress")
        _run(argv, say)
    timed("eval", evaluate, target=str(out.resolve()))
    if until == "eval":
        return None

    manifest = build_manifest(cfg, files, log, runs, started)
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    write_card(out / "README.md", manifest)
    say(f"default model ready in {out}: per-character perplexity {manifest['validation']['perplexity_char']:.2f} "
        f"on {cfg.valid_source.path} ({sum(v['seconds'] for v in log.values()):.0f} s of stages)")
    return manifest


NOTES_MARK = "<!-- Notes below this line are written by hand; the recipe keeps them when it rewrites the card. -->"


def write_card(path: Path, manifest: dict) -> None:
    """The model card from the manifest, followed by the hand-written notes of the card it replaces."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    notes = old[old.index(NOTES_MARK):] if NOTES_MARK in old else ""
    atomic_write(path, model_card(manifest) + ("\n" + notes if notes else ""))


def _machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_manifest(cfg: RecipeConfig, files: dict, log: dict, runs: Path, started: float) -> dict:
    def src(s: Source) -> dict:
        return {"path": s.path, "origin": s.origin, "licence": s.licence,
                "files": {str(f.relative_to(cfg.corpora) if f.is_relative_to(cfg.corpora) else f.name): sha256_file(f)
                          for f in files[s]}}

    stages = {}
    for name in ("pretrain", "dialogue", "mmi"):
        s = json.loads((runs / name / "summary.json").read_text(encoding="utf-8"))
        conf = json.loads((runs / name / "train_config.json").read_text(encoding="utf-8"))["config"]
        seconds = log[name]["seconds"]
        stages[name] = {
            "data": Path(conf["data"]).name, "mmi": s["mmi"],
            "init_from": conf["init_from"] and Path(conf["init_from"]).parent.name,
            "steps": s["step"], "schedule_steps": conf["max_steps"], "lr": conf["lr"], "tokens_seen": s["tokens_seen"], "train_seconds": round(s["elapsed"], 1),
            "wall_seconds": seconds, "useful_tokens_per_s": round(s["tokens_seen"] / s["elapsed"], 1) if s["elapsed"] else None,
            "best_step": s["best_step"], "best_valid_loss": s["best_valid_loss"], "params": s["params"],
            "device": s.get("device"), "batch_tokens": conf.get("batch_tokens") or s.get("batch_tokens"),
            "time_limit": conf.get("time_limit"), "stop_reason": s.get("stop_reason"),
            "machine": json.loads((runs / name / MACHINE).read_text(encoding="utf-8")) if (runs / name / MACHINE).is_file() else None,
        }
    report = json.loads((cfg.work / "eval" / "report.json").read_text(encoding="utf-8"))
    systems = report["systems"]
    like = next(v for v in systems.values() if v["ranking"] == "likelihood")
    mmi = next(v for v in systems.values() if v["ranking"] == "mmi")
    keys = ("bleu2_char", "distinct2_char", "f1_char", "avg_len_chars", "repeat_3gram_rate", "empty_rate")
    model_conf = json.loads((cfg.output / "dialogue" / "config.json").read_text(encoding="utf-8"))
    return {
        "recipe": "chitchat default-model (chitchat/recipe/recipe.py)",
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "model": {k: model_conf[k] for k in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")},
        "sources": {"pretrain": [src(s) for s in cfg.pretrain_sources], "chitchat": [src(s) for s in cfg.chitchat_sources],
                    "validation": [src(cfg.valid_source)]},
        "stages": stages,
        "stage_wall_seconds": {k: v["seconds"] for k, v in log.items()},
        "wall_seconds": round(sum(v["seconds"] for v in log.values()), 1),
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "validation": {
            "data": cfg.valid_source.path, "cases": report["cases"], "seed": report["settings"]["seed"],
            "sampling": report["settings"]["sampling"],
            "perplexity_char": like["perplexity_char"], "perplexity_token": like["perplexity_token"],
            "likelihood_ranking": {k: like[k] for k in keys}, "mmi_ranking": {k: mmi[k] for k in keys},
        },
        "guard": guard_figure(cfg),
        "files": model_files(cfg.output),
    }


GUARD_CASES = 300  # tests/test_default_model.py: the shipped model keeps this figure within 2%


def guard_figure(cfg: RecipeConfig) -> dict:
    """Teacher-forced per-character perplexity of the shipped dialogue model on the first GUARD_CASES
    cases of the validation file: a check that runs in seconds."""
    data = _inputs(cfg, [cfg.valid_source])
    ppl, cases = char_perplexity(cfg.output / "dialogue", data, limit=GUARD_CASES)
    return {"data": cfg.valid_source.path, "cases": cases, "perplexity_char": ppl}


def _where(machine: dict | None) -> str:
    if not machine:
        return "an unrecorded machine"
    return f"one {machine['gpu']}" if machine.get("gpu") else f"{machine['cpus']} CPU cores"


def model_card(m: dict) -> str:
    v, model = m["validation"], m["model"]
    params = m["stages"]["dialogue"]["params"]
    trained_on = sorted({_where(s.get("machine")) for s in m["stages"].values()})
    train_minutes = sum(s["wall_seconds"] for s in m["stages"].values()) / 60
    rows = "\n".join(
        f"| {label} | {v['likelihood_ranking'][k]:{fmt}} | {v['mmi_ranking'][k]:{fmt}} |"
        for k, label, fmt in (("bleu2_char", "BLEU-2 (char)", ".2f"), ("distinct2_char", "Distinct-2 (char)", ".4f"),
                              ("f1_char", "F1 (char)", ".4f"), ("avg_len_chars", "average length (chars)", ".2f"),
                              ("repeat_3gram_rate", "replies repeating a 3-gram", ".2%"),
                              ("empty_rate", "empty replies", ".2%")))
    sources = "\n".join(
        f"| {role} | `{s['path']}` | {s['origin']} | {s['licence']} |"
        for role, group in m["sources"].items() for s in group)
    stages = "\n".join(
        f"| {name} | {s['data']}{' (reversed)' if s['mmi'] else ''} | {s['init_from'] or 'scratch'} | {s['steps']:,} | "
        f"{s['tokens_seen']:,} | {s['train_seconds']:,.0f} s | {s['useful_tokens_per_s']:,.0f} | {_where(s.get('machine'))} |"
        for name, s in m["stages"].items())
    return f"""---
language: zh
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, dialogue, chitchat, chinese]
---

# chitchat default model

A small Chinese chitchat model (GPT-2, {model['n_layer']} layers x {model['n_embd']}, {model['n_head']} heads,
{model['n_positions']} positions, {model['vocab_size']:,} characters, {params / 1e6:.1f} M parameters) and its
reverse MMI model, which scores P(history | reply) to rerank candidates. Built by `make default-model`
(`chitchat default-model`, `chitchat/recipe/recipe.py`) from open corpora: {train_minutes:.0f} minutes of training on
{' and '.join(trained_on)}, data preparation and evaluation on {_where(m['machine'])} ({m['wall_seconds'] / 60:.0f} minutes
of stages in all). `TRAINED_ON.json` beside this card records every source (with SHA-256), stage, step
count, token count, time and machine.

## Intended use

Casual conversation in Chinese for demonstrations, hobby projects and as a starting point for
fine-tuning on your own corpora (`chitchat train --init-from`). Input is a dialogue
`[CLS] u1 [SEP] u2 [SEP] ...`; the model continues with the next utterance.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("models/default/dialogue")
model = AutoModelForCausalLM.from_pretrained("models/default/dialogue")
```

## Data and licences

| role | file | origin | licence |
| --- | --- | --- | --- |
{sources}

SMILE (counselling conversations) teaches the language; the chitchat corpora teach the register.
CPED's transcripts come from broadcast TV series. No research-only corpus (such as LCCC) was used.
The validation file holds other TV series than the training file and was never trained on.

## Training

| stage | data | from | steps | tokens | time | tokens/s | machine |
| --- | --- | --- | ---: | ---: | ---: | ---: | --- |
{stages}

## Metrics

On `{v['data']}` ({v['cases']:,} reply positions, the 3 preceding utterances as context, seed {v['seed']},
sampling {', '.join(f'{k}={x}' for k, x in v['sampling'].items())}):
per-character perplexity **{v['perplexity_char']:.2f}** (per token {v['perplexity_token']:.2f}).

| metric | likelihood ranking | MMI ranking |
| --- | ---: | ---: |
{rows}

## Limitations

A small model ({params / 1e6:.1f} M parameters, {train_minutes:.0f} minutes of training): replies are short, often generic, and can be
wrong, odd or contradict earlier turns. It knows little about the world, has no persona
consistency, and had no safety training: it can repeat anything its corpora hold. Much of its
language comes from counselling conversations, which shows in its register. Do not use it where a
wrong or inappropriate reply matters.
"""


def add_arguments(p) -> None:
    add_options(p, RecipeConfig)
    p.add_argument("--until", choices=STAGES, help="stop after this stage: preprocess (to train on another machine), "
                   "train, export or eval")


def run(args) -> int:
    cfg = options_from_args(RecipeConfig, args)
    run_recipe(cfg, say=lambda text: print(text, flush=True), until=args.until)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_command("default-model", sys.modules[__name__], sys.argv[1:]))
