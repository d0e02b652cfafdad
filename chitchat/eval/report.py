"""The files `chitchat eval` writes: report.json, report.md (its tables) and cases.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from chitchat.eval.cases import Case

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
    ("cut_rate", "replies cut at the length cap", "{:.2%}"),
]
COHERENCE_LABELS = [("recall_at_1", "Recall@1"), ("recall_at_2", "Recall@2"), ("mrr", "MRR")]
SELECTION_LABELS = [("r10_at_1", "R10@1"), ("r10_at_2", "R10@2"), ("r10_at_5", "R10@5"), ("map", "MAP"),
                    ("mrr", "MRR"), ("p_at_1", "P@1")]


def _fmt(value, fmt: str = "{:.3f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def markdown_table(report: dict) -> str:
    """The generation metrics, one column per system."""
    systems = list(report["systems"])
    lines = ["| metric | " + " | ".join(systems) + " |", "| --- |" + " ---: |" * len(systems)]
    for key, label, fmt in METRIC_LABELS:
        lines.append(f"| {label} | " + " | ".join(_fmt(report["systems"][s].get(key), fmt) for s in systems) + " |")
    return "\n".join(lines)


def ranking_table(per_model: dict, labels: list[tuple[str, str]], names: dict | None = None) -> str:
    """One row per (model, scoring), one column per metric; `names`: each scoring's row label."""
    names = names or {}
    several = len(per_model) > 1
    head = "| scoring | " + " | ".join(label for _, label in labels) + " |"
    lines = [("| model " if several else "") + head, ("| --- " if several else "") + "| --- |" + " ---: |" * len(labels)]
    for model, by_scoring in per_model.items():
        for name, values in by_scoring.items():
            row = f"| {names.get(name, name)} | " + " | ".join(_fmt(values[k]) for k, _ in labels) + " |"
            lines.append((f"| {model} " if several else "") + row)
    return "\n".join(lines)


def tables(report: dict) -> str:
    """Every table of the report, as markdown (what the command prints)."""
    parts = []
    if report["systems"]:
        parts += [f"Generation, {report['cases']} test cases:", "", markdown_table(report), ""]
    coh = report.get("coherence")
    if coh:
        parts += [f"Coherence: the true reply ranked among {coh['negatives'] + 1} ({coh['negatives']} replies drawn "
                  f"from other dialogues, seed {coh['seed']}), {coh['cases']} cases; ties count against it:", "",
                  ranking_table(coh["systems"], COHERENCE_LABELS, report.get("scorings")), ""]
    sel = report.get("selection")
    if sel:
        parts += [f"Response selection on {sel['file']}: {sel['contexts']} contexts scored "
                  f"({sel['contexts_10_candidates']} with 10 candidates, for R10@k); skipped {sel['skipped'] or 'none'}:",
                  "", ranking_table(sel["systems"], SELECTION_LABELS, report.get("scorings")), ""]
    return "\n".join(parts)


def write_outputs(out: Path, report: dict, cases: list[Case], per_case: list[dict]) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "cases.jsonl", "w", encoding="utf-8") as f:
        for c, systems in zip(cases, per_case):
            f.write(json.dumps({"source": c.source, "context": c.context, "reference": c.reference, **systems},
                               ensure_ascii=False) + "\n")
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    skipped = report["skipped"]
    data = ", ".join(d["path"] for d in report["data"]) or "no dialogue data"
    md = [
        "# chitchat eval report", "",
        f"{report['cases']} test cases from {data}; seed {report['settings']['seed']}.", "",
        tables(report),
    ]
    if report["systems"]:
        md += ["Systems: " + "; ".join(f"`{name}` = {v['model']} ranked by {v['ranking']}"
                                       for name, v in report["systems"].items()) + ".", ""]
    md += [
        f"Skipped dialogues: {skipped['dialogues'] or 'none'}; skipped cases: {skipped['cases'] or 'none'}; "
        f"file errors: {len(skipped['file_errors'])}.", "",
        "Reply settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"]["reply"].items()), "",
        "Metric definitions: docs/evaluation.md.", "",
    ]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
