"""The sweep behind the chat's default sampling settings: `chitchat eval` of one model pair on CPED
validation dialogues under several sampling settings, each ranked by likelihood and by MMI.

Prints one markdown table (a row per setting and ranking) and writes it to --table; the last line is
one JSON object {"bench": "sampling_sweep", "rows": [...], "chosen": NAME}. The choice rule: among
settings with 5 candidates (the chat's latency budget) whose MMI-ranked replies repeat a 3-gram in at
most 5% of cases and are never empty, the highest char F1 with MMI ranking, ties (within 0.002) to
the higher Distinct-2. Every setting states every sampling option, so the defaults never leak in.

    .venv/bin/python bench/sampling_sweep.py --model models/default/dialogue --mmi-model models/default/mmi \\
        --data ../shared/corpora/open/cped_valid.jsonl --limit 600 --table models/default/SAMPLING_SWEEP.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Every setting spells out every sampling option (the rest of BASE): the chat's defaults, which this
# sweep chooses, must not leak into the rows it compares.
BASE = {"--topk": "0", "--topp": "0", "--temperature": "1.0", "--repetition-penalty": "1.0",
        "--no-repeat-ngram-size": "0", "--candidates": "5"}
# name -> the options that differ from BASE
SETTINGS = {
    "k8": {"--topk": "8"},
    "k8-nr3": {"--topk": "8", "--no-repeat-ngram-size": "3"},
    "k8-t0.7-nr3": {"--topk": "8", "--temperature": "0.7", "--no-repeat-ngram-size": "3"},
    "k8-t0.5-rp1.2-nr3": {"--topk": "8", "--temperature": "0.5", "--repetition-penalty": "1.2",
                          "--no-repeat-ngram-size": "3"},
    "k8-t0.7-rp1.2-nr3": {"--topk": "8", "--temperature": "0.7", "--repetition-penalty": "1.2",
                          "--no-repeat-ngram-size": "3"},
    "k20-p0.9-t0.9-rp1.2-nr3": {"--topk": "20", "--topp": "0.9", "--temperature": "0.9", "--repetition-penalty": "1.2",
                                "--no-repeat-ngram-size": "3"},
    "p0.9-t0.8-nr3": {"--topp": "0.9", "--temperature": "0.8", "--no-repeat-ngram-size": "3"},
    # what twice the candidates would buy: not eligible, the chat's latency budget is 5 candidates + MMI
    "k8-t0.7-rp1.2-nr3-c10": {"--topk": "8", "--temperature": "0.7", "--repetition-penalty": "1.2",
                              "--no-repeat-ngram-size": "3", "--candidates": "10"},
}
CANDIDATES = "5"  # the chat's latency targets are set for 5 candidates + MMI ranking


def options(name: str) -> list[str]:
    return [x for k, v in (BASE | SETTINGS[name]).items() for x in (k, v)]


KEYS = ("bleu2_char", "distinct2_char", "f1_char", "avg_len_chars", "repeat_3gram_rate", "empty_rate")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--mmi-model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=800)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, help="torch threads (default: every core)")
    ap.add_argument("--only", nargs="*", help="names of the settings to run (default: all)")
    ap.add_argument("--table", type=Path, help="write the markdown table here")
    args = ap.parse_args()
    from chitchat.cli import main as chitchat

    rows = []
    names = args.only or list(SETTINGS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = Path(tmp) / name
            argv = ["eval", "--model", args.model, "--mmi-model", args.mmi_model, "--compare-mmi", "--data", args.data,
                    "--limit", str(args.limit), "--seed", str(args.seed), "--output", str(out), "--no-progress",
                    *(["--threads", str(args.threads)] if args.threads else []),
                    *options(name)]
            if chitchat(argv) != 0:
                raise SystemExit(f"eval failed for {name}")
            report = json.loads((out / "report.json").read_text(encoding="utf-8"))
            for system in report["systems"].values():
                rows.append({"setting": name, "ranking": system["ranking"], **{k: system[k] for k in KEYS},
                             "perplexity_char": system["perplexity_char"], "cases": report["cases"]})
    ok = [r for r in rows if r["ranking"] == "mmi" and r["repeat_3gram_rate"] <= 0.05 and r["empty_rate"] == 0
          and (BASE | SETTINGS[r["setting"]])["--candidates"] == CANDIDATES]
    best = max(ok, key=lambda r: (round(r["f1_char"] / 0.002), r["distinct2_char"])) if ok else None
    lines = [f"Sampling sweep: `chitchat eval` on {Path(args.data).name}, first {rows[0]['cases']} cases, seed {args.seed}, "
             f"model {args.model}, MMI model {args.mmi_model} (`bench/sampling_sweep.py`).", "",
             "| setting | ranking | BLEU-2 | Distinct-2 | F1 | avg len | 3-gram repeats | empty |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mark = " **(chosen)**" if best is r else ""
        lines.append(f"| `{r['setting']}`{mark} | {r['ranking']} | {r['bleu2_char']:.2f} | {r['distinct2_char']:.4f} | "
                     f"{r['f1_char']:.4f} | {r['avg_len_chars']:.2f} | {r['repeat_3gram_rate']:.2%} | {r['empty_rate']:.2%} |")
    base = " ".join(f"{k} {v}" for k, v in BASE.items())
    lines += ["", f"Settings: each is `{base}` but for: " + "; ".join(
              f"`{n}` = `{' '.join(f'{k} {v}' for k, v in SETTINGS[n].items())}`" for n in names) +
              f". Rule: among MMI-ranked rows with {CANDIDATES} candidates (the chat's latency budget), at most 5% "
              "3-gram repeats and no empty reply, the highest F1 (ties within 0.002 to the higher Distinct-2)."]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.table:
        args.table.write_text(table, encoding="utf-8")
    print(json.dumps({"bench": "sampling_sweep", "rows": rows, "chosen": best and best["setting"]}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
