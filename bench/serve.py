#!/usr/bin/env python3
"""Server throughput: `chitchat serve` under 1 and 16 concurrent clients (issue 6).

Builds random-weight `small` dialogue and MMI models (nothing is trained), starts `chitchat serve` on
127.0.0.1 in a child process, waits for /healthz, then sends `--requests` POST /generate requests at
concurrency 1 and at concurrency 16 (each client sends its next request when it has its reply) from
a lean asyncio HTTP/1.1 client in this process. Replies are exactly `--reply-len` tokens (min_len =
max_len, top-k 8) so that timing does not depend on the weights; the history is bench/chat.py's.
Two workloads, each on its own server: `single` (1 candidate, no MMI: the least engine work a
request can ask, so the figures show what the server's batching does) and `mmi5` (5 candidates
ranked by MMI, the chat's default). Prints, per level, throughput (requests per second), p50 and
p95 latency, errors, the mean number of requests per engine call (a group the worker splits into
lanes makes one call a lane) and the server's CPU time per request (`cpu_ms`: what a request costs
whatever share of the cores other processes leave the server: while they keep the cores busy,
the server gets about the same share at either level, and the c16/c1 throughput ratio comes
near the ratio of these two). Then, on the `single` server (one
candidate: the reply streams as it is written), `--stream-requests` streamed chat completions
(`"stream": true` on /v1/chat/completions, the same three utterances) at both levels: time to
first token (the first event with reply text) and to the whole reply, p50. Prints each
workload's c16/c1 throughput ratio. With `--runs N` the whole bench runs N times, the workloads
taking turns (a fresh server each), and each figure is the median over the runs.
Ends with one JSON line whose headline keys are the first workload's (`ttft_ms_c1`, `ttft_ms_c16`
and `stream_p50_ms_c1`, `stream_p50_ms_c16` among them), the other's prefixed with its name,
`<workload>_c16_over_c1` for each workload (the median ratio; `..._runs`: each run's), then the
server's threads and what the machine gave during the run (bench/machine.py).

    flock /tmp/chitchat-bench.lock .venv/bin/python bench/serve.py [--requests 200] [--workloads single,mmi5] [--runs 3]
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from local_server import free_port, start_serve, wait_ready  # noqa: E402  (bench/, the script's own folder)
from machine import machine_note  # noqa: E402

HISTORY = ["今天下班以后我们去楼下新开的火锅店吧",
           "好啊不过听说那家店排队的人特别多要等很久"]
TEXT = "那我们早点过去先拿个号再去旁边逛逛"  # with the history: 59 tokens, as bench/chat.py
WORKLOADS = {"single": (1, False), "mmi5": (5, True)}  # candidates per reply, MMI ranking


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] if values else float("nan")


def build_models(root: Path, preset: str) -> tuple[Path, Path]:
    from chitchat.model.gpt2 import build_model, save_model
    from chitchat.tokens.tokenizer import DEFAULT_VOCAB, load_tokenizer

    tokenizer = load_tokenizer(DEFAULT_VOCAB)
    for name, seed in (("dialogue", 0), ("mmi", 1)):
        save_model(build_model(tokenizer, preset, seed=seed), tokenizer, root / name)
    return root / "dialogue", root / "mmi"


def start_server(dialogue: Path, mmi: Path | None, port: int, candidates: int, args) -> subprocess.Popen:
    cmd = ["--model", str(dialogue), "--host", "127.0.0.1",
           "--port", str(port), "--min-len", str(args.reply_len), "--max-len", str(args.reply_len),
           "--max-tokens", str(max(64, args.reply_len)), "--candidates", str(candidates), "--topk", "8",
           "--log-level", "warning"] + (["--threads", str(args.threads)] if args.threads else [])
    cmd += ["--mmi-model", str(mmi)] if mmi else ["--no-mmi"]
    if args.window_ms is not None:
        cmd += ["--batch-window-ms", str(args.window_ms)]
    if args.max_batch is not None:
        cmd += ["--max-batch", str(args.max_batch)]
    if args.int8:
        cmd.append("--int8")
    return start_serve(cmd)


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: POST a JSON body, read the response.
    The load generator shares the 2 cores with the server, so it must cost little: httpx took 2 to 3 ms
    of CPU a request here, which at concurrency 16 held each batch back by about 50 ms."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = next(int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:"))
        return int(head[0].split()[1]), await self.reader.readexactly(length)

    async def post_stream(self, path: str, body: bytes) -> tuple[int, float | None]:
        """POST, then read a chunked text/event-stream answer to its end: (status, seconds from the
        request to the first event carrying reply text, None when none came)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        t0 = time.perf_counter()
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        if not any(h.lower() == "transfer-encoding: chunked" for h in head[1:]):
            length = next(int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:"))
            await self.reader.readexactly(length)
            return status, None
        first, pending = None, b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return status, first
            pending += data[:-2]
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if first is None and event.startswith(b"data: {") and json.loads(event[6:])["choices"] and \
                        json.loads(event[6:])["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far: its threads' together (Linux; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


async def load(port: int, concurrency: int, requests: int, pid: int = 0) -> dict:
    """`requests` POST /generate from `concurrency` clients, each sending its next one on each reply.
    `cpu_ms`: the server's CPU time per request (process `pid`): the work a request costs, whatever
    share of the cores other processes leave it."""
    latencies: list[float] = []
    errors = sent = 0
    body = json.dumps({"text": TEXT, "history": HISTORY}).encode()

    async def one_client():
        nonlocal sent, errors
        conn = Connection(port)
        while sent < requests:
            sent += 1
            t0 = time.perf_counter()
            try:
                status, data = await conn.post("/generate", body)
                ok = status == 200 and bool(json.loads(data).get("generated_text"))
            except (OSError, EOFError, ValueError, StopIteration, asyncio.IncompleteReadError):
                ok = False
                conn.close()
                conn = Connection(port)
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += not ok
        conn.close()

    info = f"http://127.0.0.1:{port}/info"
    before = httpx.get(info).json()["worker"]
    cpu = cpu_seconds(pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu
    after = httpx.get(info).json()["worker"]
    calls = after["engine_calls"] - before["engine_calls"]
    return {"throughput": requests / wall, "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "cpu_ms": cpu * 1000 / requests,
            "errors": errors, "mean_batch": (after["answered"] - before["answered"]) / max(calls, 1), "wall_s": wall}


async def load_stream(port: int, concurrency: int, requests: int) -> dict:
    """`requests` streamed chat completions from `concurrency` clients: time to first token and to
    the whole reply."""
    ttft: list[float] = []
    latencies: list[float] = []
    errors = sent = 0
    messages = [{"role": "user", "content": HISTORY[0]}, {"role": "assistant", "content": HISTORY[1]},
                {"role": "user", "content": TEXT}]
    body = json.dumps({"messages": messages, "stream": True}).encode()

    async def one_client():
        nonlocal sent, errors
        conn = Connection(port)
        while sent < requests:
            sent += 1
            t0 = time.perf_counter()
            try:
                status, first = await conn.post_stream("/v1/chat/completions", body)
                ok = status == 200 and first is not None
            except (OSError, EOFError, ValueError, KeyError, StopIteration, asyncio.IncompleteReadError):
                ok, first = False, None
                conn.close()
                conn = Connection(port)
            latencies.append((time.perf_counter() - t0) * 1000)
            if ok:
                ttft.append(first * 1000)
            errors += not ok
        conn.close()

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return {"ttft_p50_ms": percentile(ttft, 50), "ttft_p95_ms": percentile(ttft, 95),
            "p50_ms": percentile(latencies, 50), "errors": errors}


def measure(dialogue: Path, mmi: Path, workload: str, levels: list[int], args) -> dict[int, dict]:
    candidates, use_mmi = WORKLOADS[workload]
    port = free_port()
    proc = start_server(dialogue, mmi if use_mmi else None, port, candidates, args)
    try:
        problem = wait_ready(f"http://127.0.0.1:{port}", proc, timeout=180)
        if problem:
            raise SystemExit(f"bench/serve.py: {problem}")
        asyncio.run(load(port, 1, 5))  # warm-up
        asyncio.run(load(port, max(levels), 2 * max(levels)))
        results = {}
        for c in levels:
            results[c] = r = asyncio.run(load(port, c, args.requests, proc.pid))
            print(f"{workload} concurrency {c:2d}: {r['throughput']:.2f} req/s, p50 {r['p50_ms']:.0f} ms, "
                  f"p95 {r['p95_ms']:.0f} ms, errors {r['errors']}, mean batch {r['mean_batch']:.1f}, "
                  f"server CPU {r['cpu_ms']:.0f} ms a request "
                  f"({args.requests} requests in {r['wall_s']:.1f} s)", file=sys.stderr)
        lo, hi = levels
        print(f"{workload} c{hi}/c{lo}: {results[hi]['throughput'] / results[lo]['throughput']:.2f}x "
              f"(load average {os.getloadavg()[0]:.1f})", file=sys.stderr)
        if candidates == 1 and args.stream_requests:  # the reply streams as it is written
            for c in levels:
                r = asyncio.run(load_stream(port, c, args.stream_requests))
                results[c].update(ttft_ms=r["ttft_p50_ms"], stream_p50_ms=r["p50_ms"], errors=results[c]["errors"]
                                  + r["errors"])
                print(f"{workload} streamed, concurrency {c:2d}: time to first token p50 {r['ttft_p50_ms']:.1f} ms, "
                      f"p95 {r['ttft_p95_ms']:.1f} ms; whole reply p50 {r['p50_ms']:.0f} ms; errors {r['errors']} "
                      f"({args.stream_requests} requests)", file=sys.stderr)
        return results
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level (default 200)")
    p.add_argument("--stream-requests", type=int, default=100,
                   help="streamed requests per level on the one-candidate server, for time to first token "
                        "(default 100; 0: none)")
    p.add_argument("--concurrency", default="1,16", help="two levels, comma-separated (default 1,16)")
    p.add_argument("--workloads", default="single,mmi5",
                   help="single: 1 candidate, no MMI; mmi5: 5 candidates ranked by MMI (the chat's default); "
                        "the first one fills the headline keys of the JSON line (default single,mmi5)")
    p.add_argument("--preset", default="small")
    p.add_argument("--reply-len", type=int, default=25, help="tokens per reply (default 25)")
    p.add_argument("--window-ms", type=float, help="the server's --batch-window-ms (default: the server's)")
    p.add_argument("--max-batch", type=int, help="the server's --max-batch (default: the server's)")
    p.add_argument("--threads", type=int, help="the server's --threads (default: the server's, one per core)")
    p.add_argument("--int8", action="store_true", help="the server's --int8")
    p.add_argument("--runs", type=int, default=1,
                   help="run the whole bench this many times, the workloads taking turns; figures are the "
                        "medians over the runs (default 1)")
    args = p.parse_args()
    lo, hi = sorted(int(c) for c in args.concurrency.split(","))
    workloads = args.workloads.split(",")
    if not set(workloads) <= set(WORKLOADS):
        p.error(f"workloads are {', '.join(WORKLOADS)}")

    threads = args.threads or torch.get_num_threads()  # the server's own default is torch's
    note, machine_keys = machine_note()
    print(note, file=sys.stderr)
    runs: dict[str, list[dict[int, dict]]] = {w: [] for w in workloads}
    with tempfile.TemporaryDirectory(prefix="chitchat-bench-serve-") as tmp:
        dialogue, mmi = build_models(Path(tmp), args.preset)
        for run in range(max(1, args.runs)):
            if args.runs > 1:
                print(f"run {run + 1} of {args.runs}", file=sys.stderr)
            for w in workloads:
                runs[w].append(measure(dialogue, mmi, w, [lo, hi], args))
    ratios = {w: [r[hi]["throughput"] / r[lo]["throughput"] for r in rs] for w, rs in runs.items()}
    results = {w: {c: {k: statistics.median(r[c][k] for r in rs) for k in rs[0][c]} for c in (lo, hi)}
               for w, rs in runs.items()}
    for w in workloads:
        results[w][lo]["errors"] = sum(r[lo]["errors"] for r in runs[w])
        results[w][hi]["errors"] = sum(r[hi]["errors"] for r in runs[w])
        print(f"{w}: c{hi}/c{lo} {statistics.median(ratios[w]):.2f}x (runs: "
              f"{', '.join(f'{x:.2f}' for x in ratios[w])})", file=sys.stderr)
    print(f"preset {args.preset}, replies {args.reply_len} tokens, {args.requests} requests per level, "
          f"threads {threads}{', int8' if args.int8 else ''}; load average {os.getloadavg()[0]:.2f}",
          file=sys.stderr)
    line: dict = {"bench": "serve"}
    for k, w in enumerate(workloads):
        r, prefix = results[w], "" if k == 0 else f"{w}_"
        line.update({f"{prefix}throughput_c{lo}": round(r[lo]["throughput"], 2),
                     f"{prefix}throughput_c{hi}": round(r[hi]["throughput"], 2),
                     f"{prefix}p50_ms_c{lo}": round(r[lo]["p50_ms"], 1),
                     f"{prefix}p50_ms_c{hi}": round(r[hi]["p50_ms"], 1),
                     f"{prefix}p95_ms_c{hi}": round(r[hi]["p95_ms"], 1),
                     f"{prefix}cpu_ms_c{lo}": round(r[lo]["cpu_ms"], 1),
                     f"{prefix}cpu_ms_c{hi}": round(r[hi]["cpu_ms"], 1)})
        for c in (lo, hi):
            if "ttft_ms" in r[c]:
                line[f"{prefix}ttft_ms_c{c}"] = round(r[c]["ttft_ms"], 1)
                line[f"{prefix}stream_p50_ms_c{c}"] = round(r[c]["stream_p50_ms"], 1)
        if k == 0:
            line["errors"] = sum(x["errors"] for res in results.values() for x in res.values())
        line[f"{prefix}speedup_c{hi}"] = round(r[hi]["throughput"] / r[lo]["throughput"], 2)
    for w in workloads:
        line[f"{w}_c{hi}_over_c{lo}"] = round(statistics.median(ratios[w]), 2)
        line[f"{w}_c{hi}_over_c{lo}_runs"] = [round(x, 2) for x in ratios[w]]
    line["runs"] = max(1, args.runs)
    line["workload"] = workloads[0] + (" int8" if args.int8 else "")
    line["threads"] = threads
    line.update(machine_keys)
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
