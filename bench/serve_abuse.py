#!/usr/bin/env python3
"""`chitchat serve` under abuse, on loopback, bounded in count and time (issue 20): what survives.

Builds random-weight `tiny` dialogue and MMI models (nothing is trained), starts `chitchat serve` on
127.0.0.1 with its default limits and timeouts, and then, in order:
1. a victim session gets one turn;
2. `--sessions` POST /sessions (16 at a time) from another client: counted by status (201 created,
   429 over the per-client rate, 503 store full);
3. 20 cross-site POST /sessions, as a page on another origin sends them (`Origin`, `Sec-Fetch-Site`,
   a text body), and one GET /info with a foreign Host name (DNS rebinding);
4. `--idle` idle connections, 10 that trickle a header byte a second and 10 that send headers and
   then never the whole body, held for up to `--hold` seconds: when the server closed each, and
   /healthz's latency meanwhile;
5. the victim session read back: is its history whole?
Ends with one JSON line: the counts, the seconds until the slow connections were closed, the
/healthz latencies, whether the victim survived, the server's RSS and its log (stdout and stderr:
lines, tracebacks, whether the victim's session id is in it).

    .venv/bin/python bench/serve_abuse.py [--sessions 1000] [--idle 32] [--hold 30] [-- serve flags...]
"""

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chitchat.model.gpt2 import build_model, save_model  # noqa: E402  (after the path: a checkout's package)
from chitchat.tokens.tokenizer import DEFAULT_VOCAB, load_tokenizer  # noqa: E402
from local_server import free_port, wait_ready  # noqa: E402  (bench/, the script's own folder)


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

    async with httpx.AsyncClient(timeout=10) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return counts


async def hold_connections(port: int, idle: int, hold_s: float, url: str) -> dict:
    """Open idle, header-trickle and slow-body connections; the seconds until the server closed each
    kind (the last of them; None: still open at the end), and /healthz latencies meanwhile."""
    start = time.monotonic()
    closed: dict[str, list[float | None]] = {"idle": [], "trickle": [], "slow_body": []}

    async def one(kind: str, i: int):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
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
        async with httpx.AsyncClient(timeout=5) as http:
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1000, help="session creations in the flood")
    ap.add_argument("--idle", type=int, default=32, help="idle connections held")
    ap.add_argument("--hold", type=float, default=30.0, help="seconds the slow connections are held at most")
    ap.add_argument("serve_args", nargs="*", help="more `chitchat serve` flags (after --)")
    args = ap.parse_args()
    if not (1 <= args.sessions <= 100_000 and 0 <= args.idle <= 1000 and 0 < args.hold <= 600):
        ap.error("bounded: --sessions 1..100000, --idle 0..1000, --hold up to 600 s")

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(DEFAULT_VOCAB)
        save_model(build_model(tokenizer, "tiny", seed=1), tokenizer, Path(tmp) / "dialogue")
        save_model(build_model(tokenizer, "tiny", seed=2), tokenizer, Path(tmp) / "mmi")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "server.log", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "chitchat", "serve", "--model", f"{tmp}/dialogue",
                                 "--mmi-model", f"{tmp}/mmi", "--port", str(port), "--threads", "1",
                                 "--max-len", "8", *args.serve_args], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)  # the access log (stdout) too
        try:
            if wait_ready(url, proc, timeout=120):
                log.seek(0)
                print(log.read()[-2000:], file=sys.stderr)
                return 1
            rss_start = rss_mb(proc.pid)
            victim = httpx.post(url + "/sessions").json()["id"]
            history = httpx.post(f"{url}/sessions/{victim}/messages", json={"text": "你好"}, timeout=60).json()["history"]

            t = time.monotonic()
            flood = asyncio.run(flood_sessions(url, args.sessions))
            flood_s = round(time.monotonic() - t, 1)
            page = {"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}
            cross = [httpx.post(url + "/sessions", headers=page, content=b"x").status_code for _ in range(20)]
            rebinding = httpx.get(url + "/info", headers={"Host": "attacker.example:%d" % port}).status_code
            held = asyncio.run(hold_connections(port, args.idle, args.hold, url))
            after = httpx.get(f"{url}/sessions/{victim}")
            survived = after.status_code == 200 and after.json()["history"] == history
            rss_end = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.seek(0)
        stderr = log.read()
    result = {
        "sessions_flooded": args.sessions, "flood_statuses": flood, "flood_s": flood_s,
        "cross_site_created": cross.count(201), "cross_site_statuses": sorted(set(cross)),
        "foreign_host_info_status": rebinding, "idle_connections": args.idle, "hold_s": args.hold, **held,
        "victim_session_survived": survived, "rss_mb_start": rss_start, "rss_mb_end": rss_end,
        "log_lines": len(stderr.splitlines()), "log_tracebacks": stderr.count("Traceback"),
        "victim_id_in_log": victim in stderr,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
