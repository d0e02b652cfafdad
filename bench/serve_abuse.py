#!/usr/bin/env python3
"""`chitchat serve` under abuse, on loopback, bounded in count and time (issues 20 and 25): what survives.

Builds random-weight `tiny` dialogue and MMI models (nothing is trained), starts `chitchat serve` on
127.0.0.1 with its default limits and timeouts, and then, in order, each client from its own
loopback address (Linux routes all of 127/8 to lo):
1. a victim session gets one turn;
2. `--sessions` POST /sessions (16 at a time) from another client: counted by status (201 created,
   429 over the per-client rate or share, 503 store full);
3. 20 cross-site POST /sessions, as a page on another origin sends them (`Origin`, `Sec-Fetch-Site`,
   a text body), and one GET /info with a foreign Host name (DNS rebinding);
4. the fairness scenarios of issue 25 (bench/abuse_fairness.py): N1 1,000 creations with forged
   X-Forwarded-For, N2 20 creations from each of 52 addresses (each with an honest client's share of
   successful creations and turns meanwhile), N7 32 seeded requests (engine calls), N6 32 heavy
   requests whose clients left (an honest request's latency ratio; the median of `--n6-bursts`, and
   with `--n6-model` the same on a server of that model, e.g. the shipped one);
5. `--idle` idle connections, 10 that trickle a header byte a second and 10 that send headers and
   then never the whole body, held for up to `--hold` seconds: when the server closed each, and
   /healthz's latency meanwhile; at the same time N4, 200 pipelined requests never read;
6. the victim session read back: is its history whole?
7. a second server with `--max-connections 16`: N3, 16 sockets reconnecting whenever closed for
   `--reconnect-s` seconds while an honest client asks /healthz.
Ends with one JSON line: the counts, the seconds until the slow connections were closed, the
/healthz latencies, the fairness figures, whether the victim survived, the server's RSS and its log
(stdout and stderr: lines, tracebacks, whether the victim's session id or a forged address is in it).

    .venv/bin/python bench/serve_abuse.py [--sessions 1000] [--idle 32] [--hold 35] [--reconnect-s 25]
                                          [-- serve flags...]
"""

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chitchat.model.gpt2 import build_model, save_model  # noqa: E402  (after the path: a checkout's package)
from chitchat.tokens.tokenizer import DEFAULT_VOCAB, load_tokenizer  # noqa: E402
from local_server import free_port, wait_ready  # noqa: E402  (bench/, the script's own folder)
import abuse_fairness as fair  # noqa: E402


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


async def flood_sessions(url: str, n: int, concurrency: int = 16) -> dict:
    counts: dict[str, int] = {}
    todo = iter(range(n))

    async def client(http: httpx.AsyncClient):
        for _ in todo:
            try:
                status = str((await http.post(url + "/sessions")).status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            counts[status] = counts.get(status, 0) + 1

    async with fair.at("127.0.0.1", timeout=10) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return counts


ADDRESSES = {"idle": "127.0.0.11", "trickle": "127.0.0.12", "slow_body": "127.0.0.13"}  # a client each


async def hold_connections(port: int, idle: int, hold_s: float, url: str) -> dict:
    """Open idle, header-trickle and slow-body connections; the seconds until the server closed each
    kind (the last of them; None: still open at the end), and /healthz latencies meanwhile."""
    start = time.monotonic()
    closed: dict[str, list[float | None]] = {"idle": [], "trickle": [], "slow_body": []}

    async def one(kind: str, i: int):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ADDRESSES[kind], 0))
        except OSError:
            closed[kind].append(0.0)  # refused or closed at once
            return
        try:
            if kind == "slow_body":
                writer.write(b"POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n\r\n{")
            elif kind == "trickle":
                writer.write(b"GET /info HTTP/1.1\r\nX-Slow: ")
            while time.monotonic() - start < hold_s:
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                    if not data:
                        closed[kind].append(round(time.monotonic() - start, 1))
                        return
                except asyncio.TimeoutError:
                    if kind == "trickle":
                        writer.write(b"a")
                        await writer.drain()
            closed[kind].append(None)
        except OSError:
            closed[kind].append(round(time.monotonic() - start, 1))
        finally:
            writer.close()

    async def health() -> list[float]:
        times = []
        async with fair.at("127.0.0.14", timeout=5) as http:
            while time.monotonic() - start < hold_s:
                t = time.monotonic()
                try:
                    ok = (await http.get(url + "/healthz")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                times.append(round((time.monotonic() - t) * 1000, 1) if ok else float("inf"))
                await asyncio.sleep(1.0)
        return times

    tasks = [one("idle", i) for i in range(idle)] + [one("trickle", i) for i in range(10)] + \
            [one("slow_body", i) for i in range(10)]
    *_, healthz = await asyncio.gather(*tasks, health())
    def last(xs):
        return None if not xs or None in xs else max(xs)
    return {"closed_after_s": {k: last(v) for k, v in closed.items()},
            "still_open": {k: v.count(None) for k, v in closed.items()},
            "healthz_ms_max": max(healthz) if healthz else None,
            "healthz_failures": sum(t == float("inf") for t in healthz)}


@contextmanager
def serving(tmp: str, log, *flags: str):
    """`chitchat serve` on the tiny models in `tmp`, its output into `log`: (url, port, process), stopped
    with SIGINT after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "chitchat", "serve", "--model", f"{tmp}/dialogue",
                             "--mmi-model", f"{tmp}/mmi", "--port", str(port), "--threads", "1",
                             "--max-len", "8", *flags], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,  # + access log
                            env={k: v for k, v in os.environ.items() if k != "CHITCHAT_API_KEY"})  # a key-less server
    try:
        if problem := wait_ready(url, proc, timeout=120):
            log.seek(0)
            raise SystemExit(f"{problem}\n{log.read()[-2000:]}")
        yield url, port, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def flag_value(flags: list[str], name: str, default: float) -> float:
    return float(flags[flags.index(name) + 1]) if name in flags[:-1] else default


async def hold_and_unread(port: int, url: str, args) -> tuple[dict, float | None]:
    """Step 5: the slow connections, and N4's unread pipeline at the same time."""
    bound = flag_value(args.serve_args, "--write-timeout", 10.0) + 20
    return await asyncio.gather(hold_connections(port, args.idle, args.hold, url), fair.unread_pipeline(port, bound))


def bursts(port: int, url: str, n: int) -> dict:
    """N6 `n` times: the median idle and burst latencies and ratio, and every ratio."""
    runs = [asyncio.run(fair.abandoned_burst(port, url)) for _ in range(n)]
    ratios = [r["latency_ratio"] for r in runs]
    def median(key):  # None when a burst failed (its honest request got no reply)
        values = [r[key] for r in runs]
        return None if None in values else statistics.median(values)
    return {"idle_ms": median("idle_ms"), "burst_ms": median("burst_ms"), "latency_ratio": median("latency_ratio"),
            "latency_ratios": ratios}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1000, help="session creations in the flood")
    ap.add_argument("--idle", type=int, default=32, help="idle connections held")
    ap.add_argument("--hold", type=float, default=35.0,
                    help="seconds the slow connections are held at most (past the 30 s body timeout)")
    ap.add_argument("--reconnect-s", type=float, default=25.0, help="seconds of N3's reconnecting sockets")
    ap.add_argument("--n6-bursts", type=int, default=5, help="N6 bursts (the median ratio is reported)")
    ap.add_argument("--n6-model", help="also run N6 on a server of this model directory (dialogue/ and mmi/ "
                                       "in it, e.g. models/default): n6_model_* keys")
    ap.add_argument("serve_args", nargs="*", help="more `chitchat serve` flags (after --)")
    args = ap.parse_args()
    if not (1 <= args.sessions <= 100_000 and 0 <= args.idle <= 1000 and 0 < args.hold <= 600
            and 0 < args.reconnect_s <= 600 and 1 <= args.n6_bursts <= 20):
        ap.error("bounded: --sessions 1..100000, --idle 0..1000, --hold and --reconnect-s up to 600 s, "
                 "--n6-bursts 1..20")

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(DEFAULT_VOCAB)
        save_model(build_model(tokenizer, "tiny", seed=1), tokenizer, Path(tmp) / "dialogue")
        save_model(build_model(tokenizer, "tiny", seed=2), tokenizer, Path(tmp) / "mmi")
        log = open(Path(tmp) / "server.log", "w+")
        with serving(tmp, log, *args.serve_args) as (url, port, proc), \
                httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.20"), timeout=60) as victim_http:
            rss_start = rss_mb(proc.pid)
            victim = victim_http.post(url + "/sessions").json()["id"]
            history = victim_http.post(f"{url}/sessions/{victim}/messages", json={"text": "你好"}).json()["history"]

            t = time.monotonic()
            flood = asyncio.run(flood_sessions(url, args.sessions))
            flood_s = round(time.monotonic() - t, 1)
            page = {"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}
            cross = [httpx.post(url + "/sessions", headers=page, content=b"x").status_code for _ in range(20)]
            rebinding = httpx.get(url + "/info", headers={"Host": "attacker.example:%d" % port}).status_code
            n1 = asyncio.run(fair.forwarded_flood(url))
            n2 = asyncio.run(fair.address_flood(url))
            n7 = asyncio.run(fair.seeded_burst(url))
            n6 = bursts(port, url, args.n6_bursts)
            held, n4 = asyncio.run(hold_and_unread(port, url, args))
            after = victim_http.get(f"{url}/sessions/{victim}")
            survived = after.status_code == 200 and after.json()["history"] == history
            rss_end = rss_mb(proc.pid)
        with serving(tmp, log, "--max-connections", "16", *args.serve_args) as (url, port, _):
            n3 = asyncio.run(fair.reconnect_flood(port, url, seconds=args.reconnect_s))
        n6_model = {}
        if args.n6_model:
            with serving(args.n6_model, log, *args.serve_args) as (url, port, _):
                n6_model = {f"n6_model_{k}": v for k, v in bursts(port, url, args.n6_bursts).items()}
        log.seek(0)
        stderr = log.read()
    result = {
        "sessions_flooded": args.sessions, "flood_statuses": flood, "flood_s": flood_s,
        "cross_site_created": cross.count(201), "cross_site_statuses": sorted(set(cross)),
        "foreign_host_info_status": rebinding, "idle_connections": args.idle, "hold_s": args.hold, **held,
        "victim_session_survived": survived,
        "n1_flood_statuses": n1["statuses"], "n1_honest_ok": n1["honest_ok"],
        "n1_forged_addresses_in_log": bool(re.search(r"\b10\.0\.\d+\.\d+:\d+ - ", stderr)),
        "n2_flood_statuses": n2["statuses"], "n2_honest_ok": n2["honest_ok"],
        "n3_healthz_ok": n3["healthz_ok"], "n3_healthz_tries": n3["healthz_tries"], "n3_reconnects": n3["reconnects"],
        "n4_lifetime_s": n4, "n4_write_timeout_s": flag_value(args.serve_args, "--write-timeout", 10.0),
        **{f"n6_{k}": v for k, v in n6.items()}, **n6_model,
        "n7_engine_calls": n7["engine_calls"], "n7_ok": n7["ok"],
        "rss_mb_start": rss_start, "rss_mb_end": rss_end,
        "log_lines": len(stderr.splitlines()), "log_tracebacks": stderr.count("Traceback"),
        "victim_id_in_log": victim in stderr,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
