"""The fairness scenarios of bench/serve_abuse.py (issue 25), each bounded in count and time.

Clients come from several loopback addresses (Linux routes all of 127/8 to lo): a flood from some,
an honest client from another, whose share of successful requests during the flood is the measure.
- N1 `forwarded_flood`: session creations from one address, each with another X-Forwarded-For;
- N2 `address_flood`: 20 session creations from each of 52 addresses (more than the store holds);
- N3 `reconnect_flood`: sockets that reconnect whenever closed, against a low --max-connections,
  while an honest client asks /healthz on a fresh connection every half second;
- N4 `unread_pipeline`: 200 pipelined GET /openapi.json whose answers are never read: how long the
  server keeps the connection (read from the kernel's TCP state, without reading);
- N6 `abandoned_burst`: heavy chat completions whose clients leave once the server has read them,
  and an honest small request's latency meanwhile, as a ratio of its idle latency;
- N7 `seeded_burst`: concurrent requests each with its own seed: the engine calls they took.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import httpx

MAX_RECONNECTS = 100_000  # N3: a bound on the reconnecting sockets' connections, whatever the time
HEAVY = {"messages": [{"role": "user", "content": "今天天气怎么样" * 200}], "n": 8, "max_tokens": 64}


def at(address: str, timeout: float = 30, keep_alive: bool = True) -> httpx.AsyncClient:
    """An HTTP client whose connections come from `address`."""
    limits = httpx.Limits() if keep_alive else httpx.Limits(max_keepalive_connections=0)
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=address), timeout=timeout,
                             limits=limits)


async def honest_rounds(url: str, address: str, done: asyncio.Event, rounds: int = 6) -> dict:
    """Rounds of a new session plus a turn in the client's first session: up to `rounds` while the
    flood lasts (0.2 s apart), then one once it is over (the store as the flood left it). The share
    of them that succeeded (a turn succeeds when its session was kept)."""
    tally = {"ok": 0, "tries": 0}
    first: list[str] = []

    async def one_round(http: httpx.AsyncClient):
        tally["tries"] += 1
        try:
            r = await http.post(url + "/sessions")
            if r.status_code == 201:
                tally["ok"] += 1
                first[:] = first or [r.json()["id"]]
            if first:
                tally["tries"] += 1
                t = await http.post(f"{url}/sessions/{first[0]}/messages", json={"text": "你好"})
                tally["ok"] += t.status_code == 200 and t.json().get("kept") is True
        except httpx.HTTPError:
            pass

    async with at(address, timeout=60) as http:
        for _ in range(rounds):
            if done.is_set():
                break
            await one_round(http)
            await asyncio.sleep(0.2)
        await done.wait()  # the flood is bounded in count, each request in time
        await one_round(http)
    return {"honest_ok": round(tally["ok"] / max(tally["tries"], 1), 3), "honest_tries": tally["tries"]}


async def _flood(url: str, requests: list[tuple[str, dict]], concurrency: int = 16) -> dict:
    """POST /sessions for each (source address, headers), `concurrency` at a time: counts by status."""
    counts: dict[str, int] = {}
    todo = iter(requests)
    clients: dict[str, httpx.AsyncClient] = {}

    async def worker():
        for address, headers in todo:
            if address not in clients:
                clients[address] = at(address, timeout=10)
            http = clients[address]
            try:
                status = str((await http.post(url + "/sessions", headers=headers)).status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            counts[status] = counts.get(status, 0) + 1

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        for http in clients.values():
            await http.aclose()
    return counts


async def _with_honest(url: str, address: str, flood) -> dict:
    done = asyncio.Event()

    async def flooding():
        try:
            return await flood
        finally:
            done.set()

    statuses, honest = await asyncio.gather(flooding(), honest_rounds(url, address, done))
    return {"statuses": statuses, **honest}


async def forwarded_flood(url: str, n: int = 1000, honest: str = "127.0.0.21") -> dict:
    """N1: `n` creations from 127.0.0.1, each claiming another client in X-Forwarded-For."""
    requests = [("127.0.0.1", {"X-Forwarded-For": f"10.0.{i // 250}.{i % 250 + 1}"}) for i in range(n)]
    return await _with_honest(url, honest, _flood(url, requests))


async def address_flood(url: str, addresses: int = 52, each: int = 20, honest: str = "127.0.0.22") -> dict:
    """N2: `each` creations from each of `addresses` loopback addresses, interleaved."""
    requests = [(f"127.0.1.{a + 1}", {}) for _ in range(each) for a in range(addresses)]
    return await _with_honest(url, honest, _flood(url, requests))


async def reconnect_flood(port: int, url: str, sockets: int = 16, seconds: float = 25.0,
                          honest: str = "127.0.0.23") -> dict:
    """N3: `sockets` idle connections from 127.0.0.1, each reopened whenever the server closes it, for
    `seconds`; meanwhile /healthz on a fresh connection from `honest` every 0.5 s."""
    stop = time.monotonic() + seconds
    opened = [0]

    async def hog():
        while time.monotonic() < stop and opened[0] < MAX_RECONNECTS:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            opened[0] += 1
            try:
                await asyncio.wait_for(reader.read(1), max(0.01, stop - time.monotonic()))  # b"": closed
            except (asyncio.TimeoutError, OSError):
                pass
            finally:
                writer.close()
            await asyncio.sleep(0.02)

    async def checks() -> list[bool]:
        results = []
        async with at(honest, timeout=5, keep_alive=False) as http:
            while time.monotonic() < stop:
                try:
                    results.append((await http.get(url + "/healthz")).status_code == 200)
                except httpx.HTTPError:
                    results.append(False)
                await asyncio.sleep(0.5)
        return results

    *_, results = await asyncio.gather(*(hog() for _ in range(sockets)), checks())
    return {"healthz_ok": round(sum(results) / max(len(results), 1), 3), "healthz_tries": len(results),
            "reconnects": opened[0]}


def _tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of the socket (1: established), without reading from it."""
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[:1])[0]


async def unread_pipeline(port: int, bound_s: float, address: str = "127.0.0.24") -> float | None:
    """N4: seconds from sending 200 pipelined GET /openapi.json (never reading) until the server has
    closed the connection; None if still open after `bound_s`."""
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((address, 0))
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        start = time.monotonic()
        await asyncio.get_running_loop().sock_sendall(sock, b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n"
                                                      * 200)
        while time.monotonic() - start < bound_s:
            if _tcp_state(sock) != 1:
                return round(time.monotonic() - start, 1)
            await asyncio.sleep(0.1)
        return None
    finally:
        sock.close()


async def wait_idle(url: str, bound_s: float = 180) -> None:
    """Until the model worker has nothing waiting (at most `bound_s`)."""
    deadline = time.monotonic() + bound_s
    async with httpx.AsyncClient(timeout=10) as http:
        while time.monotonic() < deadline:
            worker = (await http.get(url + "/info")).json()["worker"]
            if worker and worker["waiting"] == 0:
                return
            await asyncio.sleep(0.2)


async def abandoned_burst(port: int, url: str, n: int = 32, address: str = "127.0.0.25",
                          honest: str = "127.0.0.26") -> dict:
    """N6: an honest small /generate's latency, idle (median of 3) and while `n` heavy chat completions
    run whose clients closed their connections once the server had read them (0.3 s after sending)."""
    body = json.dumps(HEAVY).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    async with at(honest, timeout=180) as http:
        async def small() -> float | None:
            t = time.monotonic()
            ok = (await http.post(url + "/generate", json={"text": "你好"})).status_code == 200
            return (time.monotonic() - t) * 1000 if ok else None

        idle = sorted([await small() for _ in range(3)], key=lambda x: x or float("inf"))[1]
        writers = []
        for _ in range(n):
            _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
            writer.write(head + body)
            writers.append(writer)
        await asyncio.sleep(0.3)
        for writer in writers:
            writer.close()
        burst = await small()
    await wait_idle(url)
    return {"idle_ms": round(idle, 1) if idle else None, "burst_ms": round(burst, 1) if burst else None,
            "latency_ratio": round(burst / idle, 2) if idle and burst else None}


async def seeded_burst(url: str, n: int = 32, address: str = "127.0.0.27") -> dict:
    """N7: `n` concurrent /generate, each with its own seed: the engine calls they took (/info's counter)."""
    async with at(address, timeout=180) as http:
        await wait_idle(url)
        before = (await http.get(url + "/info")).json()["worker"]["engine_calls"]
        replies = await asyncio.gather(*(http.post(url + "/generate", json={"text": "你好", "seed": i})
                                         for i in range(n)))
        after = (await http.get(url + "/info")).json()["worker"]["engine_calls"]
    return {"engine_calls": after - before, "ok": sum(r.status_code == 200 for r in replies)}
