#!/usr/bin/env python3
"""The judged comparison of issue 24: each system's replies to held-out contexts, then one blind
judging sheet of them all (`chitchat judge sheet`, the true reply as the calibrating system).

Systems (the shipped model, its index and selector, as `chitchat eval` runs them):
- `shipped`: the bot before retrieval: 5 sampled candidates ranked by MMI, no index;
- `retrieval`: the index's top reply alone (1 retrieved, none sampled);
- `mix_mmi`: 5 sampled + 10 retrieved, ranked by MMI;
- `mix_selector`: 5 sampled + 10 retrieved, ranked by the learned selector;
- `retrieved_selector`: 20 retrieved, none sampled, ranked by the selector.
Data nothing was trained or indexed on: CPED valid (TV series other than the training ones), LCCC
toy valid (Weibo; research-only data, used here only to judge), and the Xiaoai pairs the shipped
index held out (`holdout.jsonl` of `chitchat index --holdout-every`). The last reply of each
dialogue is a case; `--contexts` per data file.

    .venv/bin/python bench/judged_systems.py --out runs/judge [--contexts 40 20 20]
Then give each judge its sheet (`runs/judge/sheet/sheet_judgeK.md` and instructions.md) and score
with `chitchat judge score runs/judge/sheet/key.json JUDGMENTS...`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "corpora"
SYSTEMS = {
    "shipped": ["--no-index", "--candidates", "5", "--retrieved", "0", "--ranking", "mmi"],
    "retrieval": ["--candidates", "0", "--retrieved", "1", "--ranking", "likelihood"],
    "mix_mmi": ["--candidates", "5", "--retrieved", "10", "--ranking", "mmi"],
    "mix_selector": ["--candidates", "5", "--retrieved", "10", "--ranking", "selector"],
    "retrieved_selector": ["--candidates", "0", "--retrieved", "20", "--ranking", "selector"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--xiaoai", type=Path, required=True, help="the held-out Xiaoai dialogues (JSON lines)")
    p.add_argument("--contexts", type=int, nargs=3, default=[40, 20, 20], metavar="N",
                   help="cases from CPED valid, LCCC toy valid and the Xiaoai holdout")
    p.add_argument("--systems", nargs="*", default=list(SYSTEMS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--index", help="the response index (default: the model's, models/default/index)")
    p.add_argument("--selector", help="the selector (default: the model's, models/default/selector.json)")
    p.add_argument("--no-sheet", action="store_true", help="only the replies")
    args = p.parse_args()
    extra = [*(["--index", args.index] if args.index else []), *(["--selector", args.selector] if args.selector else [])]
    data = {"cped_valid": SHARED / "open" / "cped_valid.jsonl", "lccc_valid": SHARED / "lccc_toy" / "valid.json",
            "xiaoai_holdout": args.xiaoai}
    cases = []
    for name in args.systems:
        for (label, path), limit in zip(data.items(), args.contexts):
            out = args.out / name / label
            cmd = [sys.executable, "-m", "chitchat", "eval", "--data", str(path), "--last-turn-only", "--limit",
                   str(limit), "--negatives", "0", "--seed", str(args.seed), "--no-progress", "--output", str(out),
                   *SYSTEMS[name], *(extra if name != "shipped" else [])]
            print("$ chitchat " + " ".join(cmd[3:]), file=sys.stderr)
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            cases += ["--cases", f"{name}={out / 'cases.jsonl'}"]
    if args.no_sheet:
        return 0
    sheet = [sys.executable, "-m", "chitchat", "judge", "sheet", *cases, "--judges", "2", "--seed", str(args.seed),
             "--output", str(args.out / "sheet")]
    print("$ chitchat " + " ".join(sheet[3:]), file=sys.stderr)
    subprocess.run(sheet, check=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
