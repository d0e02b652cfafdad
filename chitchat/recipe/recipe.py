"""The recipe of the shipped default model, one command: `chitchat default-model` (`make default-model`).

Stages, each the call of a stage's function, printed before it runs as the `chitchat` command that does
the same (to rerun a stage by hand), each skipped when its output is complete, so that a stopped run
continues where it stopped (training stages resume from their last checkpoint):

    vocab        the character vocabulary of the training corpora (`chitchat vocab`)
    preprocess   three datasets: pre-training (SMILE), chitchat (CPED train, XPersona, KdConv, ChatterBot),
                 validation (CPED valid: other TV series; validated and reported on, never trained on)
    pretrain     a GPT-2 language model on the pre-training set: the language
    dialogue     the dialogue model: the pre-trained model fine-tuned on the chitchat set
    mmi          the MMI model: the pre-trained model fine-tuned on the reversed chitchat set
    export       best/ of dialogue and mmi into OUTPUT/dialogue and OUTPUT/mmi (fp16 safetensors)
    eval         `chitchat eval --compare-mmi` on CPED valid (all cases, seed 1)
    card         OUTPUT/TRAINED_ON.json (sources with SHA-256, stages, steps, tokens, times, figures)
                 and OUTPUT/README.md (the model card, chitchat.recipe.card)

Everything is seeded; the training stages run a fixed number of steps, so a rerun on a CPU
computes the same weights. RecipeConfig holds every choice (the corpora: chitchat.recipe.corpora);
`tests/recipe/test_recipe.py` runs the whole recipe on tiny sources in seconds.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from chitchat.errors import ChitchatError
from chitchat.engine.options import EngineOptions
from chitchat.eval.cases import EvalConfig, eval_settings
from chitchat.eval.evaluate import char_perplexity, evaluate
from chitchat.files import REPO_ROOT, atomic_write, sha256_file
from chitchat.model.default import MANIFEST
from chitchat.model.gpt2 import load_model, save_model
from chitchat.options import option, to_argv
from chitchat.recipe.card import write_card
from chitchat.recipe.corpora import CHATTERBOT, CPED_TRAIN, CPED_VALID, KDCONV, SMILE, XPERSONA, Corpus, corpus_files, corpus_inputs
from chitchat.tokens.preprocess import PreprocessConfig, preprocess
from chitchat.tokens.vocab import VocabConfig, build_vocab_file
from chitchat.training.checkpoint import commit_dir, new_partial_dir, recover_dir
from chitchat.training.config import TrainConfig
from chitchat.training.trainer import train

MACHINE = "machine.json"  # in each training run: the machine it trained on


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
    pretrain_sources: tuple[Corpus, ...] = (SMILE,)
    chitchat_sources: tuple[Corpus, ...] = (CPED_TRAIN, XPERSONA, KDCONV, CHATTERBOT)
    valid_source: Corpus = CPED_VALID
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


def command_line(name: str, cfg, *extra: str) -> str:
    """`$ chitchat NAME ...`: the command that does what a stage's call with `cfg` does (`extra`: the
    arguments of what `cfg` holds without a flag of its own)."""
    return "$ " + shlex.join(["chitchat", name, *to_argv(cfg), *extra])


def train_config(cfg: RecipeConfig, stage: StageConfig, data: Path, out: Path, *, mmi: bool,
                 init_from: Path | None) -> TrainConfig:
    """The training run of one stage; it resumes from its last checkpoint when it stopped before."""
    start = {"preset": cfg.preset, "model_config": dict(cfg.model_config)} if init_from is None else {"init_from": init_from}
    return TrainConfig(data=data, valid_data=cfg.work / "data" / "valid", output=out, max_steps=stage.steps, lr=stage.lr,
                       seed=cfg.seed, resume=True, patience=10 ** 6, stop_after_steps=stage.stop_after,
                       warmup_steps=stage.warmup_steps, eval_every=stage.eval_every, batch_tokens=stage.batch_tokens,
                       time_limit=stage.time_limit, num_threads=cfg.threads, device=cfg.device, mmi=mmi,
                       progress=cfg.progress, **start)


def train_command(cfg: RecipeConfig, run: TrainConfig) -> str:
    """The `chitchat train` command of a stage's run (its model config, which has no flag, in a file)."""
    if not run.model_config:
        return command_line("train", run)
    conf = cfg.work / "model_config.json"
    conf.write_text(json.dumps(run.model_config), encoding="utf-8")
    return command_line("train", run, "--config", str(conf))


def _train_done(run: Path, stage: StageConfig) -> bool:
    try:
        s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if stage.stop_after is not None and stage.stop_after < stage.steps:
        return s.get("step") == stage.stop_after and s.get("stop_reason") == "stop_after_steps"
    return s.get("step") == stage.steps and s.get("stop_reason") in ("completed", "early stopping")


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
    files = {} if prepared and until == "train" else {s: corpus_files(cfg.corpora, s) for group in sources.values() for s in group}
    vocab = VocabConfig(corpora=corpus_inputs(cfg.corpora, [*cfg.pretrain_sources, *cfg.chitchat_sources]),
                        output=work / "vocab.txt", size=cfg.vocab_size)

    def make_vocab() -> None:
        say(command_line("vocab", vocab))
        say(build_vocab_file(vocab))
    timed("vocab", make_vocab)
    for name, group in sources.items():
        prep = PreprocessConfig(inputs=corpus_inputs(cfg.corpora, group), output=work / "data" / name,
                                vocab=str(vocab.output), max_len=cfg.max_len, seed=cfg.seed, progress=cfg.progress,
                                valid_fraction=None, valid_count=1 if name == "valid" else 100)

        def make_dataset(prep=prep) -> None:
            shutil.rmtree(prep.output, ignore_errors=True)
            say(command_line("preprocess", prep))
            say(preprocess(prep).text())
        timed(f"preprocess-{name}", make_dataset)
    if until == "preprocess":
        return None

    runs = work / "runs"
    plan = [("pretrain", cfg.pretrain, "pretrain", False, None),
            ("dialogue", cfg.dialogue, "chitchat", False, runs / "pretrain" / "last"),
            ("mmi", cfg.mmi, "chitchat", True, runs / "pretrain" / "last")]
    for name, stage, data, mmi, init in plan:
        run = train_config(cfg, stage, work / "data" / data, runs / name, mmi=mmi, init_from=init)

        def train_stage(run=run, stage=stage) -> None:
            if not _train_done(run.output, stage):
                say(train_command(cfg, run))
                train(run)
                (run.output / MACHINE).write_text(json.dumps(_machine(), indent=2), encoding="utf-8")
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

    # the reply settings are `chitchat eval`'s defaults but for the seed
    scoring = EvalConfig(models=[str(out / "dialogue")], output=work / "eval", compare_mmi=True,
                         data=corpus_inputs(cfg.corpora, [cfg.valid_source]), limit=cfg.eval_limit or None,
                         negatives=cfg.eval_negatives, progress=cfg.progress,
                         engine=EngineOptions(mmi_model=str(out / "mmi")), settings=replace(eval_settings(), seed=cfg.seed))

    def score() -> None:
        say(command_line("eval", scoring, "--model", *scoring.models, "--mmi-model", scoring.engine.mmi_model,
                         "--seed", str(cfg.seed)))
        evaluate(scoring)
        say(f"wrote {scoring.output}/report.md, report.json, cases.jsonl")
    timed("eval", score, target=str(out.resolve()))
    if until == "eval":
        return None

    manifest = build_manifest(cfg, files, log, runs, started)
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    write_card(out / "README.md", manifest)
    say(f"default model ready in {out}: per-character perplexity {manifest['validation']['perplexity_char']:.2f} "
        f"on {cfg.valid_source.path} ({sum(v['seconds'] for v in log.values()):.0f} s of stages)")
    return manifest


def _machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_manifest(cfg: RecipeConfig, files: dict, log: dict, runs: Path, started: float) -> dict:
    def src(s: Corpus) -> dict:
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
            "sampling": report["settings"]["reply"],  # the reply settings: sampling, ranking, context, seed
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
    data = corpus_inputs(cfg.corpora, [cfg.valid_source])
    ppl, cases = char_perplexity(cfg.output / "dialogue", data, limit=GUARD_CASES)
    return {"data": cfg.valid_source.path, "cases": cases, "perplexity_char": ppl}
