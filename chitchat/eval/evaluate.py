"""Batch evaluation of dialogue models on a dialogue dataset: `chitchat eval`.

Every reply position of every dialogue (or, with `--last-turn-only`, the last one) is a test case:
the preceding utterances (at most `max_history_len`, then bounded by tokens exactly as the chat
bounds them) are the context, the actual utterance the reference. Per model it measures the
teacher-forced perplexity of the references and, on generated replies, the metrics of
`chitchat.eval.metrics`. Generation is batched across cases (left padding, one cache) by the same
engine the chat uses. With an MMI model and `--compare-mmi`, the same sampled candidates are
ranked both ways, so the two columns differ only by the ranking.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chitchat.errors import ChitchatError
from chitchat.files import sha256_file
from chitchat.engine.engine import Engine
from chitchat.model.sampling import SamplingConfig
from chitchat.eval.metrics import char_f1, chars, perplexity, repeats_3gram, reply_metrics
from chitchat.corpus.normalize import normalize
from chitchat.corpus.readers import ReadStats, expand_inputs, read_corpus
from chitchat.engine.settings import ChatSettings

DEFAULT_MAX_HISTORY = ChatSettings.max_history_len  # the context the chat's bot sees


@dataclass
class EvalConfig:
    models: list[str]
    data: list[str]
    output: Path
    mmi_model: str | None = None
    compare_mmi: bool = False
    limit: int | None = None
    seed: int = 42
    batch_size: int = 32
    last_turn_only: bool = False
    max_history_len: int = DEFAULT_MAX_HISTORY
    format: str | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    int8: bool = False
    device: str = "cpu"
    threads: int | None = None  # torch threads; None: torch's default (every core), right for a batch job
    progress: bool | None = None


@dataclass
class Case:
    context: list[str]
    reference: str
    source: str


def build_cases(cfg: EvalConfig, stats: ReadStats) -> list[Case]:
    """Test cases from the dataset files, normalised; empty utterances dropped."""
    cases: list[Case] = []
    for d in read_corpus(cfg.data, stats, cfg.format):
        utts = [u for u in (normalize(x) for x in d.utterances) if u]
        if len(utts) < 2:
            stats.skip("fewer_than_2_utterances", d.source)
            continue
        positions = [len(utts) - 1] if cfg.last_turn_only else range(1, len(utts))
        for i in positions:
            cases.append(Case(utts[max(0, i - cfg.max_history_len):i], utts[i], f"{d.source}/{i}"))
            if cfg.limit is not None and len(cases) >= cfg.limit:
                return cases
    return cases


def model_hash(model_dir: str) -> str:
    """Short hash of a loaded model directory's config, weights and tokenizer."""
    d = Path(model_dir)
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if (d / name).is_file():
            h.update(sha256_file(d / name).encode())
    return h.hexdigest()[:16]


def reference_nll(engine: Engine, cases: list[Case], batch_size: int) -> tuple[list[tuple[float, int]], int]:
    """(total NLL, token count) of each reference (its closing [SEP] included) given its context,
    bounded like the chat's, teacher-forced, in right-padded batches; and how many references were
    cut to half the model's positions to leave room for context."""
    cap = engine.n_positions // 2
    seqs, starts, truncated = [], [], 0
    for c in cases:
        ref = engine.encode(c.reference)
        truncated += len(ref) > cap
        ref = ref[:cap]
        context = engine.context_ids(engine.fit_history([engine.encode(u) for u in c.context], len(ref) + 1))
        seqs.append(context + ref + [engine.sep_id])
        starts.append(len(context))
    out = []
    for i in range(0, len(seqs), batch_size):
        means = engine.fast.sequence_nll(seqs[i:i + batch_size], starts[i:i + batch_size], engine.pad_id).tolist()
        for mean, seq, start in zip(means, seqs[i:i + batch_size], starts[i:i + batch_size]):
            n = len(seq) - start
            out.append((mean * n, n))
    return out, truncated


def char_perplexity(model_dir: str | Path, data: list[str], limit: int | None = None,
                    max_history_len: int = DEFAULT_MAX_HISTORY, batch_size: int = 32,
                    device: str = "cpu") -> tuple[float, int]:
    """(per-character perplexity, cases) of the references of the first `limit` test cases of `data`,
    teacher-forced with the context `chitchat eval` gives them: no sampling, seconds for a few hundred."""
    cfg = EvalConfig(models=[str(model_dir)], data=data, output=Path("."), limit=limit, max_history_len=max_history_len)
    cases = build_cases(cfg, ReadStats())
    if not cases:
        raise ChitchatError(f"no test case in {', '.join(data)}")
    nll, _ = reference_nll(Engine.load(str(model_dir), device=device), cases, batch_size)
    return perplexity(sum(n for n, _ in nll), sum(len(chars(c.reference)) for c in cases)), len(cases)


def _progress(total: int, desc: str, enabled: bool | None):
    from tqdm import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit=" cases", disable=disable, file=sys.stderr)


def run_model(engine: Engine, cases: list[Case], cfg: EvalConfig, use_mmi: bool) -> dict:
    """Replies of one model for every case, sampled in batches of `cfg.batch_size` cases (cases of
    similar context length together, left-padded, one cache). The candidates are ranked by MMI when
    `use_mmi`, and always also by the dialogue model's likelihood, so that with `--compare-mmi` both
    columns rank the very same candidates. Returns the chosen replies per ranking, the candidates,
    the sampling rounds of each case and the seconds spent."""
    import torch

    gen = torch.Generator()
    gen.manual_seed(cfg.seed)
    order = sorted(range(len(cases)), key=lambda k: (len(cases[k].context), sum(map(len, cases[k].context)), k))
    replies = [None] * len(cases)
    bar = _progress(len(cases), Path(engine.model_path or "model").name, cfg.progress)
    started = time.perf_counter()
    for i in range(0, len(order), cfg.batch_size):
        batch = order[i:i + cfg.batch_size]
        out = engine.replies([cases[k].context for k in batch], cfg.sampling, mmi=use_mmi, generator=gen)
        for k, reply in zip(batch, out):
            replies[k] = reply
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - started
    chosen = {True: [], False: []}
    for reply in replies:
        chosen[use_mmi].append(reply.text)
        if use_mmi:  # the same candidates, ranked by the dialogue model's likelihood
            idx, _ = Engine.choose(reply.candidates, False)
            chosen[False].append(reply.candidates[idx].text)
    return {"chosen": chosen, "replies": replies, "seconds": seconds}


def evaluate(cfg: EvalConfig) -> dict:
    cfg.sampling.validate()
    if not cfg.models:
        raise ChitchatError("give at least one --model")
    if cfg.compare_mmi and not cfg.mmi_model:
        raise ChitchatError("--compare-mmi needs --mmi-model")
    stats, skipped = ReadStats(), Counter()
    cases = build_cases(cfg, stats)
    for message in stats.errors:
        print(f"error: {message}", file=sys.stderr)
    engines = [Engine.load(m, cfg.mmi_model, int8=cfg.int8, device=cfg.device, threads=cfg.threads)
               for m in cfg.models]
    # a reference made only of characters no model knows tells nothing: skip it, counted
    usable = []
    for c in cases:
        if all(all(i == e.unk_id for i in e.encode(c.reference)) for e in engines):
            skipped["reference_all_unknown"] += 1
        else:
            usable.append(c)
    cases = usable
    if not cases:
        raise ChitchatError(f"no usable test case in {', '.join(cfg.data)} "
                            f"(dialogues read {stats.read}, skipped {dict(stats.skipped) or 0}, cases skipped {dict(skipped) or 0})")
    use_mmi = bool(cfg.mmi_model)
    modes = [False, True] if cfg.compare_mmi else [use_mmi]
    refs = [c.reference for c in cases]
    n_chars = sum(len(chars(r)) for r in refs)
    systems, timing = {}, {}
    per_case = [{"systems": {}, "models": {}} for _ in cases]
    for name, engine in zip(system_names(cfg.models), engines):
        nll, truncated = reference_nll(engine, cases, cfg.batch_size)
        total_nll, tokens = sum(n for n, _ in nll), sum(t for _, t in nll)
        result = run_model(engine, cases, cfg, use_mmi)
        timing[name] = len(cases) / result["seconds"] if result["seconds"] else None
        for m in modes:
            system = f"{name} +mmi" if m else name
            hyps = result["chosen"][m]
            systems[system] = {
                "model": engine.model_path, "ranking": "mmi" if m else "likelihood",
                "perplexity_token": perplexity(total_nll, tokens),
                "perplexity_char": perplexity(total_nll, n_chars),
                **reply_metrics(hyps, refs),
            }
            for k, (h, r) in enumerate(zip(hyps, refs)):
                per_case[k]["systems"][system] = {"reply": h, "f1_char": char_f1(h, r), "len_chars": len(chars(h)),
                                       "repeat_3gram": repeats_3gram(h)}
        resampled = 0
        for k, (reply, (n, t)) in enumerate(zip(result["replies"], nll)):
            per_case[k]["models"][name] = {"candidates": [c.to_dict() for c in reply.candidates],
                                           "sampling_rounds": reply.attempts, "reference_nll_per_token": n / t}
            resampled += reply.attempts > 1
        for m in modes:
            systems[f"{name} +mmi" if m else name].update(resampled_rate=resampled / len(cases),
                                                           references_truncated=truncated)
    report = {
        "cases": len(cases),
        "skipped": {"dialogues": dict(sorted(stats.skipped.items())), "cases": dict(sorted(skipped.items())),
                    "file_errors": stats.errors},
        "systems": systems,
        "settings": {"sampling": asdict(cfg.sampling), "seed": cfg.seed, "batch_size": cfg.batch_size,
                     "limit": cfg.limit, "last_turn_only": cfg.last_turn_only,
                     "max_history_len": cfg.max_history_len, "int8": cfg.int8, "device": cfg.device},
        "models": [{"path": e.model_path, "hash": model_hash(e.model_path)} for e in engines],
        "mmi_model": {"path": engines[0].mmi_path, "hash": model_hash(engines[0].mmi_path)} if cfg.mmi_model else None,
        "data": [{"path": str(p), "sha256": sha256_file(p)} for p in expand_inputs(cfg.data)],
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


METRIC_LABELS = [
    ("perplexity_token", "perplexity / token", "{:.2f}"), ("perplexity_char", "perplexity / character", "{:.2f}"),
    ("bleu1_char", "BLEU-1 (char)", "{:.2f}"), ("bleu2_char", "BLEU-2 (char)", "{:.2f}"),
    ("bleu4_char", "BLEU-4 (char)", "{:.2f}"), ("bleu1_word", "BLEU-1 (word)", "{:.2f}"),
    ("bleu2_word", "BLEU-2 (word)", "{:.2f}"), ("bleu4_word", "BLEU-4 (word)", "{:.2f}"),
    ("distinct1_char", "Distinct-1 (char)", "{:.4f}"), ("distinct2_char", "Distinct-2 (char)", "{:.4f}"),
    ("distinct1_word", "Distinct-1 (word)", "{:.4f}"), ("distinct2_word", "Distinct-2 (word)", "{:.4f}"),
    ("f1_char", "F1 (char)", "{:.4f}"), ("tfidf_cosine", "TF-IDF cosine", "{:.4f}"),
    ("avg_len_chars", "average length (chars)", "{:.2f}"), ("empty_rate", "empty replies", "{:.2%}"),
    ("repeat_3gram_rate", "replies repeating a 3-gram", "{:.2%}"),
]


def markdown_table(report: dict) -> str:
    systems = list(report["systems"])
    lines = ["| metric | " + " | ".join(systems) + " |", "| --- |" + " ---: |" * len(systems)]
    for key, label, fmt in METRIC_LABELS:
        lines.append(f"| {label} | " + " | ".join(fmt.format(report["systems"][s][key]) for s in systems) + " |")
    return "\n".join(lines)


def write_outputs(out: Path, report: dict, cases: list[Case], per_case: list[dict]) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "cases.jsonl", "w", encoding="utf-8") as f:
        for c, systems in zip(cases, per_case):
            f.write(json.dumps({"source": c.source, "context": c.context, "reference": c.reference, **systems},
                               ensure_ascii=False) + "\n")
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    skipped = report["skipped"]
    md = [
        "# chitchat eval report", "",
        f"{report['cases']} test cases from {', '.join(d['path'] for d in report['data'])}; "
        f"seed {report['settings']['seed']}.", "",
        markdown_table(report), "",
        "Systems: " + "; ".join(f"`{name}` = {v['model']} ranked by {v['ranking']}"
                                for name, v in report["systems"].items()) + ".", "",
        f"Skipped dialogues: {skipped['dialogues'] or 'none'}; skipped cases: {skipped['cases'] or 'none'}; "
        f"file errors: {len(skipped['file_errors'])}.", "",
        "Sampling: " + ", ".join(f"{k}={v}" for k, v in report["settings"]["sampling"].items()), "",
        "Metric definitions: README, section Evaluate.", "",
    ]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")


def add_arguments(p) -> None:
    from chitchat.engine.options import add_sampling_arguments

    p.add_argument("--model", action="append", metavar="DIR",
                   help="dialogue model or training run directory (repeat to compare models side by side); "
                        "none: the shipped default model, ranked by its MMI model")
    p.add_argument("--mmi-model", metavar="DIR", help="MMI model: replies are ranked by it")
    p.add_argument("--compare-mmi", action="store_true", help="report each model with and without MMI ranking")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="dataset files, folders or globs (any corpus format)")
    p.add_argument("--format", default=None, help="input format (default: detected per file)")
    p.add_argument("--output", "-o", type=Path, required=True, help="run directory for cases.jsonl, report.json, report.md")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N test cases")
    p.add_argument("--last-turn-only", action="store_true", help="only the last reply of each dialogue is a test case")
    p.add_argument("--max-history-len", type=int, default=DEFAULT_MAX_HISTORY, help="utterances of context at most")
    p.add_argument("--batch-size", type=int, default=32, help="test cases generated together")
    p.add_argument("--seed", type=int, default=42, help="sampling seed (a rerun reproduces report.json)")
    p.add_argument("--int8", action="store_true", help="int8 weights for the linear layers (CPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sampling_arguments(p)


def run(args) -> int:
    from chitchat.engine.options import sampling_from_args

    if args.limit is not None and args.limit < 1:
        raise ChitchatError("--limit must be at least 1")
    if args.batch_size < 1:
        raise ChitchatError("--batch-size must be at least 1")
    models, mmi_model = args.model, args.mmi_model
    if not models:
        from chitchat.model.default import ensure_default_model

        dialogue, default_mmi = ensure_default_model(say=lambda text: print(text, file=sys.stderr))
        models, mmi_model = [dialogue], mmi_model or default_mmi
    cfg = EvalConfig(
        models=models, data=args.data, output=args.output, mmi_model=mmi_model,
        compare_mmi=args.compare_mmi, limit=args.limit, seed=args.seed, batch_size=args.batch_size,
        last_turn_only=args.last_turn_only, max_history_len=args.max_history_len, format=args.format,
        sampling=sampling_from_args(args), int8=args.int8, device=args.device, threads=args.threads,
        progress=False if args.no_progress else None,
    )
    report, timing = evaluate(cfg)
    skipped = report["skipped"]
    print(f"{report['cases']} test cases; skipped dialogues: {skipped['dialogues'] or 'none'}; "
          f"skipped cases: {skipped['cases'] or 'none'}")
    print(markdown_table(report))
    for name, rate in timing.items():
        print(f"{name}: {rate:.1f} cases/s")
    print(f"wrote {cfg.output}/report.md, report.json, cases.jsonl")
    return 0
