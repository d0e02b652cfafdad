"""Batch evaluation of dialogue models: `chitchat eval` (the command line is `chitchat.commands.eval`).

On dialogue data (`data`), every reply position of every dialogue (or, with `last_turn_only`, the
last one) is a test case (`chitchat.eval.cases`). Per model it measures the teacher-forced
perplexity of the references and, on generated replies, the metrics of `chitchat.eval.metrics`;
generation is batched across cases (left padding, one cache) by the same engine the chat uses. With
`compare_mmi`, the same candidates are ranked both ways (the settings' ranking and likelihood alone),
so the two columns differ only by the ranking. Coherence (`negatives`, `chitchat.eval.coherence`)
ranks each true reply among replies of other dialogues; response selection (`selection`,
`chitchat.eval.selection`) ranks a Douban-layout file's own candidates; both by every scoring the
engine can compute (`chitchat.eval.ranking.scorings`) and by the chat's ranking.
"""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from chitchat.corpus.readers import ReadStats, expand_inputs
from chitchat.engine.engine import Engine
from chitchat.engine.options import index_dir, selector_file
from chitchat.engine.ranking import LIKELIHOOD, choose
from chitchat.errors import ChitchatError
from chitchat.eval.cases import (DEFAULT_MAX_HISTORY, Case, EvalConfig, build_cases, cases_from, eval_settings,
                                 read_dialogues, seed_of)
from chitchat.eval.coherence import coherence, draw_negatives
from chitchat.eval.ranking import label, scorings
from chitchat.eval.metrics import char_f1, chars, perplexity, repeats_3gram, reply_metrics
from chitchat.eval.report import write_outputs
from chitchat.eval.scoring import reference_nll
from chitchat.eval.selection import read_selection_file, selection, usable_groups
from chitchat.files import sha256_file

__all__ = ["Case", "EvalConfig", "build_cases", "char_perplexity", "evaluate", "run_model"]


def model_hash(model_dir: str) -> str:
    """Short hash of a loaded model directory's config, weights and tokenizer."""
    d = Path(model_dir)
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if (d / name).is_file():
            h.update(sha256_file(d / name).encode())
    return h.hexdigest()[:16]


def char_perplexity(model_dir: str | Path, data: list[str], limit: int | None = None,
                    max_history_len: int = DEFAULT_MAX_HISTORY, batch_size: int = 32,
                    device: str = "cpu") -> tuple[float, int]:
    """(per-character perplexity, cases) of the references of the first `limit` test cases of `data`,
    teacher-forced with the context `chitchat eval` gives them: no sampling, seconds for a few hundred."""
    cfg = EvalConfig(models=[str(model_dir)], data=data, output=Path("."), limit=limit,
                     settings=replace(eval_settings(), max_history_len=max_history_len))
    cases = build_cases(cfg, ReadStats())
    if not cases:
        raise ChitchatError(f"no test case in {', '.join(data)}")
    nll, _ = reference_nll(Engine.load(str(model_dir), device=device), cases, batch_size)
    return perplexity(sum(n for n, _ in nll), sum(len(chars(c.reference)) for c in cases)), len(cases)


def _progress(total: int, desc: str, enabled: bool | None):
    from tqdm import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit=" cases", disable=disable, file=sys.stderr)


def run_model(engine: Engine, cases: list[Case], cfg: EvalConfig) -> dict:
    """Replies of one model for every case, made in batches of `cfg.batch_size` cases (cases of
    similar context length together, left-padded, one cache) with `cfg.settings`. The candidates
    are ranked by the settings' ranking and also by the dialogue model's likelihood alone, so that
    with `--compare-mmi` both columns rank the very same candidates. Returns the chosen candidate
    per ranking ("ranked", "likelihood"), the replies, and the seconds spent."""
    import torch

    gen = torch.Generator()
    gen.manual_seed(seed_of(cfg))
    order = sorted(range(len(cases)), key=lambda k: (len(cases[k].context), sum(map(len, cases[k].context)), k))
    replies = [None] * len(cases)
    bar = _progress(len(cases), Path(engine.model_path or "model").name, cfg.progress)
    started = time.perf_counter()
    for i in range(0, len(order), cfg.batch_size):
        batch = order[i:i + cfg.batch_size]
        out = engine.replies([cases[k].context for k in batch], cfg.settings, generator=gen)
        for k, reply in zip(batch, out):
            replies[k] = reply
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - started
    chosen = {"ranked": [], "likelihood": []}
    for reply in replies:
        chosen["ranked"].append(reply.candidates[reply.chosen])
        idx, _ = choose(reply.candidates, LIKELIHOOD)  # the same candidates, by likelihood alone
        chosen["likelihood"].append(reply.candidates[idx])
    return {"chosen": chosen, "replies": replies, "seconds": seconds}


def _generation(name: str, engine: Engine, cases: list[Case], cfg: EvalConfig, systems: dict,
                per_case: list[dict]) -> float | None:
    """Perplexity and generated-reply metrics of one model into `systems` and `per_case`; returns
    cases generated per second."""
    ranking = str(engine.ranking_for(cfg.settings.ranking))
    modes = ["likelihood", "ranked"] if cfg.compare_mmi and ranking != "likelihood" else ["ranked"]
    refs = [c.reference for c in cases]
    n_chars = sum(len(chars(r)) for r in refs)
    nll, truncated = reference_nll(engine, cases, cfg.batch_size)
    total_nll, tokens = sum(n for n, _ in nll), sum(t for _, t in nll)
    result = run_model(engine, cases, cfg)
    resampled = sum(reply.attempts > 1 for reply in result["replies"])
    for m in modes:
        system = name if m == "likelihood" or ranking == "likelihood" else f"{name} +{ranking}"
        picked = result["chosen"][m]
        hyps = [c.text for c in picked]
        systems[system] = {
            "model": engine.model_path, "ranking": ranking if m == "ranked" else "likelihood",
            "perplexity_token": perplexity(total_nll, tokens),
            "perplexity_char": perplexity(total_nll, n_chars),
            **reply_metrics(hyps, refs),
            "cut_rate": sum(not c.finished for c in picked) / len(picked),
            "resampled_rate": resampled / len(cases), "references_truncated": truncated,
        }
        for k, (c, r) in enumerate(zip(picked, refs)):
            per_case[k]["systems"][system] = {"reply": c.text, "f1_char": char_f1(c.text, r),
                                              "len_chars": len(chars(c.text)), "repeat_3gram": repeats_3gram(c.text),
                                              "cut": not c.finished}
    for k, (reply, (n, t)) in enumerate(zip(result["replies"], nll)):
        per_case[k]["models"][name] = {"candidates": [c.to_dict() for c in reply.candidates],
                                       "sampling_rounds": reply.attempts, "reference_nll_per_token": n / t}
    return len(cases) / result["seconds"] if result["seconds"] else None


def _usable_cases(cases: list[Case], engines: list[Engine], skipped: Counter) -> list[Case]:
    """A reference made only of characters no model knows tells nothing: skipped, counted."""
    usable = []
    for c in cases:
        if all(all(i == e.unk_id for i in e.encode(c.reference)) for e in engines):
            skipped["reference_all_unknown"] += 1
        else:
            usable.append(c)
    return usable


def evaluate(cfg: EvalConfig) -> tuple[dict, dict]:
    """Run every part `cfg` asks for, write the report files; returns the report and the generation
    speed (cases per second) per model."""
    cfg.settings = cfg.settings.validate()
    cfg.engine = cfg.engine.validate()
    if not cfg.models:
        raise ChitchatError("give at least one --model")
    if cfg.compare_mmi and (cfg.engine.no_mmi or not cfg.engine.mmi_model):
        raise ChitchatError("--compare-mmi needs --mmi-model")
    if not cfg.data and not cfg.selection:
        raise ChitchatError("give --data (dialogues), --selection (a response-selection file), or both")
    if cfg.negatives < 0:
        raise ChitchatError(f"--negatives {cfg.negatives} must be 0 (off) or more")
    stats, skipped, sel_skipped = ReadStats(), Counter(), Counter()
    dialogues, sources = read_dialogues(cfg, stats) if cfg.data else ([], [])
    cases = cases_from(dialogues, sources, cfg, stats)
    for message in stats.errors:
        print(f"error: {message}", file=sys.stderr)
    groups = []
    if cfg.selection:
        groups = usable_groups(read_selection_file(cfg.selection, sel_skipped), sel_skipped, cfg.limit)
        if not groups:
            raise ChitchatError(f"--selection {cfg.selection}: no context has both a true and a wrong candidate "
                                f"(skipped {dict(sel_skipped)})")
    opts = cfg.engine
    mmi_model = None if opts.no_mmi else opts.mmi_model
    engines = [Engine.load(m, mmi_model, int8=opts.int8, device=opts.device, threads=opts.threads,
                           index_dir=index_dir(opts, m), selector=selector_file(opts, m)) for m in cfg.models]
    chat = engines[0].ranking_for(cfg.settings.ranking)
    cases = _usable_cases(cases, engines, skipped)
    if cfg.data and not cases:
        raise ChitchatError(f"no usable test case in {', '.join(cfg.data)} "
                            f"(dialogues read {stats.read}, skipped {dict(stats.skipped) or 0}, cases skipped {dict(skipped) or 0})")
    negatives = draw_negatives(dialogues, cases, cfg.negatives, seed_of(cfg)) if cases and cfg.negatives else None
    systems, timing, coherent, selected = {}, {}, {}, {}
    per_case = [{"systems": {}, "models": {}} for _ in cases]
    if negatives is not None:
        for k, negs in enumerate(negatives):
            per_case[k]["coherence"] = {"distractors": negs, "ranks": {}}
    for name, engine in zip(system_names(cfg.models), engines):
        if cases:
            timing[name] = _generation(name, engine, cases, cfg, systems, per_case)
        if negatives is not None:
            bar = _progress(len(cases), f"{name} coherence", cfg.progress)
            coherent[name], ranks = coherence(engine, cases, negatives, chat, cfg.batch_size, bar.update)
            bar.close()
            for k, r in enumerate(ranks):
                per_case[k]["coherence"]["ranks"][name] = r
        if groups:
            bar = _progress(len(groups), f"{name} selection", cfg.progress)
            selected[name], _ = selection(engine, groups, cfg.settings.max_history_len, chat, cfg.batch_size,
                                          bar.update)
            bar.close()
    report = {
        "cases": len(cases),
        "skipped": {"dialogues": dict(sorted(stats.skipped.items())), "cases": dict(sorted(skipped.items())),
                    "file_errors": stats.errors},
        "systems": systems,
        "coherence": {"negatives": cfg.negatives, "seed": seed_of(cfg), "cases": len(cases),
                      "drawn_from": "other dialogues of the same data", "systems": coherent} if negatives else None,
        "selection": {"file": str(cfg.selection), "sha256": sha256_file(cfg.selection), "contexts": len(groups),
                      "contexts_10_candidates": sum(len(g.labels) == 10 for g in groups),
                      "skipped": dict(sorted(sel_skipped.items())), "systems": selected} if groups else None,
        "settings": {"reply": cfg.settings.to_dict(), "seed": seed_of(cfg), "batch_size": cfg.batch_size,
                     "limit": cfg.limit, "last_turn_only": cfg.last_turn_only, "negatives": cfg.negatives,
                     "chat_ranking": str(chat), "int8": opts.int8, "device": opts.device},
        "scorings": {name: label(name, chat) for name in scorings(engines[0])},
        "models": [{"path": e.model_path, "hash": model_hash(e.model_path)} for e in engines],
        "mmi_model": {"path": engines[0].mmi_path, "hash": model_hash(engines[0].mmi_path)} if mmi_model else None,
        "data": [{"path": str(p), "sha256": sha256_file(p)} for p in expand_inputs(cfg.data)] if cfg.data else [],
        "versions": _versions(),
    }
    write_outputs(cfg.output, report, cases, per_case)
    return report, timing

def system_names(models: list[str]) -> list[str]:
    """Short column names: the model directory's name (a run directory's name for its best/),
    or the path as given where two names would clash."""
    def short(m: str) -> str:
        p = Path(m)
        return p.parent.name if p.name in ("best", "last") else p.name
    names = [short(m) for m in models]
    return [n if names.count(n) == 1 else m for n, m in zip(names, models)]


def _versions() -> dict:
    import torch
    import transformers

    from chitchat import __version__

    return {"chitchat": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}
