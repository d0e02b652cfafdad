#!/usr/bin/env python3
"""Benchmark of `chitchat preprocess`: throughput and peak memory on a ~10 MB and a ~100 MB corpus.

The corpora are built in a temporary directory by repeating the real corpora in ../shared/corpora,
in the shapes users bring, so that every streaming reader path is timed honestly:
  - KdConv dev files copied as they are (JSON lists of {"messages": [{"message": ...}]}),
  - LCCC toy as an object of splits {"train": [...], "valid": [...]} (the two-pass JSON reader),
  - all of those dialogues again as JSONL, one per line (LCCC lists, KdConv objects).
Each run is a child process of its own (`python -m chitchat preprocess`); its wall time and its peak
resident memory (ru_maxrss from os.wait4 on that child alone) are measured, `--repeats` times per
size, and the medians are reported. The last line of output is one JSON object:
  {"bench": "preprocess", "mb_per_s": ..., "peak_rss_mb_10mb": ..., "peak_rss_mb_100mb": ...}
with mb_per_s on the 100 MB corpus (MB = 10^6 bytes of input, wall time of the whole command,
start-up included) and peak RSS in MiB. Targets: >= 2 MB/s, peak RSS < 600 MiB for both sizes.

`--layouts` then times the readers alone (a child process that reads every dialogue and counts
utterances, no tokenising) on ~100 MB of the same dialogues in each layout: JSON lines (the
reference), JSON lines gzipped, response selection (each context with a true and a wrong
candidate), `q | a` pairs in a .csv, line-aligned .post/.response files, and one utterance per row
(CSV with a header). The JSON line gains "read_mb_per_s" per layout and "slowest_vs_jsonl", the
reference's rate over the slowest layout's (target: <= 2), and "read_peak_rss_mb" (the largest).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora"
TARGET_MB_PER_S = 2.0
TARGET_RSS_MB = 600.0


def build_corpus(folder: Path, target_bytes: int) -> int:
    """Repeat the shared corpora into `folder` until it holds at least `target_bytes`; its size."""
    folder.mkdir(parents=True)
    kdconv = sorted((SHARED / "kdconv").glob("*.json"))
    lccc = {split: json.loads((SHARED / "lccc_toy" / f"{split}.json").read_text(encoding="utf-8"))
            for split in ("train", "valid")}
    lccc_object = json.dumps(lccc, ensure_ascii=False, indent=1).encode("utf-8")
    lines = [json.dumps(d, ensure_ascii=False) for split in lccc.values() for d in split]
    for f in kdconv:
        lines += [json.dumps(d, ensure_ascii=False) for d in json.loads(f.read_text(encoding="utf-8"))]
    jsonl = ("\n".join(lines) + "\n").encode("utf-8")

    total, round_ = 0, 0
    while total < target_bytes:
        d = folder / f"round{round_:03d}"
        d.mkdir()
        units = [(d / f"kdconv_{f.stem}.json", f.read_bytes()) for f in kdconv]
        units += [(d / "lccc.json", lccc_object), (d / "all.jsonl", jsonl)]
        for path, data in units:
            if total >= target_bytes:
                break
            if path.suffix == ".jsonl" and total + len(data) > target_bytes:  # the last one, cut to size
                data = data[:data.rfind(b"\n", 0, target_bytes - total) + 1] or data[:data.find(b"\n") + 1]
            path.write_bytes(data)
            total += len(data)
        round_ += 1
    return total


def shared_dialogues() -> list[list[str]]:
    """LCCC toy and KdConv dev dialogues, as lists of strings."""
    dialogues = [d for split in ("train", "valid")
                 for d in json.loads((SHARED / "lccc_toy" / f"{split}.json").read_text(encoding="utf-8"))]
    for f in sorted((SHARED / "kdconv").glob("*.json")):
        dialogues += [[m["message"] for m in d["messages"]] for d in json.loads(f.read_text(encoding="utf-8"))]
    return [[" ".join(u.split()) for u in d] for d in dialogues if len(d) >= 2]  # no tabs or line ends inside


def _layout_blocks(layout: str, dialogues: list[list[str]], round_: int) -> dict[str, str]:
    """One round of the dialogues in a layout: file suffix -> text."""
    if layout in ("jsonl", "jsonl.gz"):
        return {layout: "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues)}
    if layout == "selection":
        lines = []
        for i, d in enumerate(dialogues):
            context = "\t".join(d[:-1])
            lines += [f"1\t{context}\t{d[-1]}\n", f"0\t{context}\t{dialogues[i - 1][-1]}\n"]
        return {"txt": "".join(lines)}
    exchanges = [(a, b) for d in dialogues for a, b in zip(d, d[1:])]
    if layout == "pipe":
        return {"csv": "".join(f"{a.replace('|', '/')} | {b.replace('|', '/')}\n" for a, b in exchanges)}
    if layout == "pair":
        return {"post": "".join(a + "\n" for a, _ in exchanges), "response": "".join(b + "\n" for _, b in exchanges)}
    if layout == "rows":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if round_ == 0:
            w.writerow(["Dialogue_ID", "Speaker", "Utterance"])
        w.writerows([f"{round_}_{i}", "AB"[j % 2], u] for i, d in enumerate(dialogues) for j, u in enumerate(d))
        return {"csv": buf.getvalue()}
    raise ValueError(layout)


LAYOUTS = ("jsonl", "jsonl.gz", "selection", "pipe", "pair", "rows")


def build_layout(folder: Path, layout: str, dialogues: list[list[str]], target_bytes: int) -> int:
    """`target_bytes` (uncompressed) of the dialogues, repeated, in one layout; the bytes written."""
    folder.mkdir(parents=True)
    files = {}
    total, round_ = 0, 0
    try:
        while total < target_bytes:
            for suffix, text in _layout_blocks(layout, dialogues, round_).items():
                if suffix not in files:
                    path = folder / f"corpus.{suffix}"
                    files[suffix] = gzip.open(path, "wb", compresslevel=6) if suffix == "jsonl.gz" else open(path, "wb")
                data = text.encode("utf-8")
                files[suffix].write(data)
                total += len(data)
            round_ += 1
    finally:
        for f in files.values():
            f.close()
    return total


_READ_ONLY = """
import sys
from chitchat.corpus.readers import ReadStats, read_corpus
stats = ReadStats()
n = sum(len(d.utterances) for d in read_corpus(sys.argv[1:], stats))
assert not stats.errors, stats.errors
print(stats.read, stats.kept, n)
"""


def read_once(folder: Path) -> dict:
    """The readers alone on every file of `folder`, in a child process: wall seconds, peak RSS."""
    cmd = [sys.executable, "-c", _READ_ONLY, *sorted(str(p) for p in folder.iterdir())]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode("utf-8", errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: reading {folder} failed:\n{out[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "counts": out.split()}


def bench_layouts(tmp: Path, size_mb: int, repeats: int) -> dict:
    dialogues = shared_dialogues()
    results = {}
    print(f"\nreaders alone, ~{size_mb} MB of the same {len(dialogues)} dialogues (repeated) in each layout:")
    for layout in LAYOUTS:
        folder = tmp / f"layout_{layout}"
        nbytes = build_layout(folder, layout, dialogues, size_mb * 1_000_000)
        runs = [read_once(folder) for _ in range(repeats)]
        shutil.rmtree(folder, ignore_errors=True)
        wall = statistics.median(r["wall_s"] for r in runs)
        results[layout] = {"mb": nbytes / 1e6, "wall_s": wall, "mb_per_s": nbytes / 1e6 / wall,
                           "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs)}
        r = results[layout]
        walls = ", ".join(f"{x['wall_s']:.2f}" for x in runs)
        print(f"  {layout:<10} {r['mb']:6.1f} MB  {r['wall_s']:6.2f} s (runs {walls})  {r['mb_per_s']:6.2f} MB/s  "
              f"peak RSS {r['peak_rss_mb']:4.0f} MiB  (records read, kept, utterances: {' '.join(runs[-1]['counts'])})")
    return results


def run_once(corpus: Path, out: Path, log: Path) -> dict:
    """One `chitchat preprocess` in a child process: wall seconds, peak RSS (MiB), its own rate."""
    cmd = [sys.executable, "-m", "chitchat", "preprocess", str(corpus), "-o", str(out), "--no-progress"]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log, "wb") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # the resources of this child alone
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"bench: `{' '.join(cmd)}` failed with status {proc.returncode}:\n{text[-2000:]}")
    inner = re.search(r"([\d.]+) MB in ([\d.]+) s", text)
    return {
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # ru_maxrss is in KiB on Linux
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "inner_s": float(inner.group(2)) if inner else float("nan"),
        "summary": text.strip().splitlines(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per corpus size; the median is reported (default 3)")
    p.add_argument("--sizes", default="10,100", help="corpus sizes in MB, comma-separated (default 10,100)")
    p.add_argument("--tmp", default=None, help="where to build the corpora (default: the system temp dir)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--layouts", action="store_true", help="also time the readers alone on every corpus layout")
    p.add_argument("--layout-mb", type=int, default=100, help="size of each layout's corpus in MB (default 100)")
    p.add_argument("--only-layouts", action="store_true", help="time only the readers on the layouts (implies --layouts)")
    args = p.parse_args(argv)
    args.layouts = args.layouts or args.only_layouts
    if not SHARED.is_dir():
        print(f"bench: {SHARED} is absent; the benchmark repeats the real corpora found there. Nothing measured.")
        return 0
    sizes = [] if args.only_layouts else [int(s) for s in args.sizes.split(",")]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="chitchat-bench-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        for size in sizes:
            corpus = tmp / f"corpus_{size}mb"
            nbytes = build_corpus(corpus, size * 1_000_000)
            n_files = sum(1 for _ in corpus.rglob("*.json*"))
            print(f"\n{size} MB corpus: {nbytes / 1e6:.1f} MB in {n_files} files (JSON lists, JSON objects of splits, JSONL)")
            runs = []
            for i in range(args.repeats):
                out = tmp / f"out_{size}mb"
                r = run_once(corpus, out, tmp / f"log_{size}_{i}.txt")
                shutil.rmtree(out, ignore_errors=True)
                r["mb_per_s"] = nbytes / 1e6 / r["wall_s"]
                runs.append(r)
                print(f"  run {i + 1}: {r['wall_s']:6.2f} s wall ({r['mb_per_s']:.2f} MB/s), "
                      f"{r['inner_s']:.2f} s processing, {r['cpu_s']:.2f} s CPU, peak RSS {r['peak_rss_mb']:.0f} MiB")
            print("  " + "\n  ".join(runs[-1]["summary"][:4]))
            results[size] = {
                "mb": nbytes / 1e6,
                "wall_s": statistics.median(r["wall_s"] for r in runs),
                "mb_per_s": statistics.median(r["mb_per_s"] for r in runs),
                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            }
            shutil.rmtree(corpus, ignore_errors=True)
        layouts = bench_layouts(tmp, args.layout_mb, args.repeats) if args.layouts else {}

    print("\nmedian of", args.repeats, "runs:")
    for size, r in results.items():
        print(f"  {size:>4} MB corpus: {r['wall_s']:.2f} s, {r['mb_per_s']:.2f} MB/s, peak RSS {r['peak_rss_mb']:.0f} MiB")
    line: dict = {"bench": "preprocess"}
    ok_speed = ok_rss = ok_layouts = True
    if results:
        big = max(results)
        ok_speed = results[big]["mb_per_s"] >= TARGET_MB_PER_S
        ok_rss = all(r["peak_rss_mb"] < TARGET_RSS_MB for r in results.values())
        print(f"targets: >= {TARGET_MB_PER_S} MB/s on the {big} MB corpus: {'met' if ok_speed else 'MISSED'}; "
              f"peak RSS < {TARGET_RSS_MB:.0f} MiB at every size: {'met' if ok_rss else 'MISSED'}")
        line["mb_per_s"] = round(results[big]["mb_per_s"], 3)
        for size in (10, 100):
            if size in results:
                line[f"peak_rss_mb_{size}mb"] = round(results[size]["peak_rss_mb"], 1)
    if layouts:
        for layout, r in layouts.items():
            print(f"  readers on {layout:<10}: {r['mb_per_s']:.2f} MB/s, peak RSS {r['peak_rss_mb']:.0f} MiB")
        slowest = min(r["mb_per_s"] for r in layouts.values())
        ratio = layouts["jsonl"]["mb_per_s"] / slowest
        ok_layouts = ratio <= 2
        print(f"target: every layout within 2x of the JSON lines reader: {'met' if ok_layouts else 'MISSED'} "
              f"(the slowest reads at 1/{ratio:.2f} of its rate)")
        line["read_mb_per_s"] = {k: round(r["mb_per_s"], 2) for k, r in layouts.items()}
        line["slowest_vs_jsonl"] = round(ratio, 2)
        line["read_peak_rss_mb"] = round(max(r["peak_rss_mb"] for r in layouts.values()), 1)
    print(json.dumps(line))
    return 1 if args.check and not (ok_speed and ok_rss and ok_layouts) else 0


if __name__ == "__main__":
    raise SystemExit(main())
