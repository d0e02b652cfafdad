"""`chitchat serve` fair under abuse (issue 25): who a client is, fair shares of the session store and
of the connections, forwarding headers trusted only from the proxies named, the write timeout, the
head limit (431) and a shutdown without a traceback. The loopback clients are 127.0.0.x addresses
(Linux routes all of 127/8 to lo)."""

from __future__ import annotations

import signal
import socket
import struct
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from chitchat.serve.app import create_app
from chitchat.serve.clients import client_key
from chitchat.serve.sessions import SessionStore
from chitchat.serve.http import ApiError

from serve_helpers import closed_by_server, config, error_of, healthy, serve_process, wait_for


def test_a_client_is_an_ipv4_address_or_an_ipv6_64():
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1" and client_key("testclient") == "testclient"


def test_sessions_are_shared_fairly():
    # issue 25, N2: 52 addresses filled the store, then every new session was a 503 for everyone
    now = [0.0]
    store = SessionStore(max_sessions=1000, idle_s=60, max_history_len=3, clock=lambda: now[0], per_client=32)
    honest = store.create("10.0.0.1")
    for i in range(52):
        for _ in range(20):
            now[0] += 0.001
            store.create(f"10.1.0.{i}")
            store.get(honest)  # the honest client goes on talking
    assert store.get(honest) is not None and len(store) == 1000 and store.held["10.0.0.1"] == 1
    assert 18 <= min(v for k, v in store.held.items() if k != "10.0.0.1") and max(store.held.values()) <= 20
    assert store.create("10.0.0.1") is not None and store.create("10.0.0.2") is not None  # no lockout
    capped = SessionStore(max_sessions=100, idle_s=60, max_history_len=3, per_client=3)
    assert all(capped.create("10.2.0.1") for _ in range(3))
    with pytest.raises(ApiError) as refused:  # one client holds at most per_client
        capped.create("10.2.0.1")
    assert refused.value.status_code == 429 and int(refused.value.headers["Retry-After"]) >= 1
    # equal shares of a full store: nothing is taken (no two clients push out each other's sessions in turn)
    even = SessionStore(max_sessions=2, idle_s=60, max_history_len=3, per_client=2)
    a, b = even.create("a"), even.create("b")
    assert even.create("a") is None and even.create("c") is None and even.get(a) and even.get(b)
    assert even.refused == 2 and even.evicted == 0


def test_the_session_store_knows_each_requests_client(engine):
    app = create_app(engine, config(max_sessions=4, client_sessions=3))

    def at(ip: str) -> TestClient:
        return TestClient(app, base_url="http://localhost", client=(ip, 5000))

    a, b, c = at("127.0.0.2"), at("2001:db8::1"), at("2001:db8::2")
    ids = [a.post("/sessions").json()["id"] for _ in range(3)]
    assert "most sessions (3)" in error_of(a.post("/sessions"), 429)
    assert b.post("/sessions").status_code == 201  # the store is full now
    assert a.get(f"/sessions/{ids[0]}").status_code == 200  # ids[1] is now a's least recently used
    assert c.post("/sessions").status_code == 201  # c: b's /64, holding 1, takes from a, holding 3
    assert a.get(f"/sessions/{ids[1]}").status_code == 404
    assert "most sessions" in error_of(c.post("/sessions"), 503)  # 2 and 2: even shares, nothing taken
    assert at("127.0.0.3").post("/sessions").status_code == 201
    assert a.get(f"/sessions/{ids[0]}").status_code == 200


def client(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def connect(port: int, address: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def tcp_state(sock: socket.socket) -> int:
    """The kernel's state of this TCP connection (1: established), read without reading any data."""
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[:1])[0]


@pytest.fixture(scope="module")
def fair_server(model_dirs):
    with serve_process(model_dirs, "--max-connections", "8", "--client-connections", "5", "--write-timeout", "1",
                       "--session-burst", "2", "--forwarded-allow-ips", "127.0.0.3", "--log-level", "info") as server:
        yield server


def test_forwarding_headers_are_believed_only_from_the_proxies_named(fair_server):
    # issue 25, N1: uvicorn trusted X-Forwarded-For from 127.0.0.1, so one client was a thousand
    with client("127.0.0.1") as direct, client("127.0.0.3") as proxy:
        forged = [direct.post(fair_server.url + "/sessions", headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code
                  for i in range(3)]
        assert forged == [201, 201, 429]  # one client (127.0.0.1): its burst of 2, then the rate
        proxied = [proxy.post(fair_server.url + "/sessions", headers={"X-Forwarded-For": f"10.9.0.{i}"}).status_code
                   for i in range(3)]
        assert proxied == [201, 201, 201]  # three clients behind the trusted proxy


def test_connections_are_shared_fairly(fair_server):
    # issue 25, N3: 16 sockets reconnecting whenever closed kept /healthz out for good
    port = fair_server.port
    hog = [connect(port, "127.0.0.5") for _ in range(6)]
    time.sleep(0.3)
    assert sum(closed_by_server(s) for s in hog) == 1  # its share: 5 (--client-connections)
    other = [connect(port, "127.0.0.6") for _ in range(3)]  # 8 open now: the limit
    time.sleep(0.3)
    assert not any(closed_by_server(s) for s in other)
    for _ in range(3):  # a newcomer takes an idle connection of the client holding the most
        with client("127.0.0.7") as honest:
            assert honest.get(fair_server.url + "/healthz").status_code == 200
    assert sum(closed_by_server(s) for s in hog) >= 2 and not any(closed_by_server(s) for s in other)
    for s in hog + other:
        s.close()


def test_a_client_that_does_not_read_is_reset(fair_server):
    # issue 25, N4: 200 pipelined requests whose answers were never read held 2.8 MB for good
    sock = connect(fair_server.port, "127.0.0.8")
    start = time.monotonic()
    sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n" * 200)
    wait_for(lambda: tcp_state(sock) != 1, timeout=10)
    assert time.monotonic() - start < 1 + 2  # --write-timeout 1, and the time to fill the buffers
    sock.close()
    assert healthy(fair_server.url)


@pytest.mark.parametrize("size", [17 * 1024, 100 * 1024, 300 * 1024])
def test_a_head_over_16_kib_is_a_431(fair_server, size):
    # issue 25, N8: heads of 17-100 KB were served (docs: over 16 KiB is 400); above ~130 KB, a reset
    with client("127.0.0.9") as c:
        assert c.get(fair_server.url + "/healthz", headers={"X-Big": "a" * (15 * 1024)}).status_code == 200
        r = c.get(fair_server.url + "/healthz", headers={"X-Big": "a" * size})
        assert "16384 bytes" in error_of(r, 431) and r.headers["connection"] == "close"
    sock = connect(fair_server.port, "127.0.0.9")  # the head in pieces
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 10_000)
    time.sleep(0.2)
    sock.sendall(b"a" * 10_000)
    sock.settimeout(5)
    assert sock.recv(100).startswith(b"HTTP/1.1 431 ")
    sock.close()


def test_shutdown_while_a_client_stalls_logs_no_traceback(model_dirs):
    # issue 25, N10: SIGTERM with a client stalled mid-response logged a CancelledError traceback
    with serve_process(model_dirs, "--shutdown-timeout", "1", "--write-timeout", "60") as server:
        sock = connect(server.port, "127.0.0.10")
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n" * 200)  # never read
        time.sleep(1)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        assert time.monotonic() - start < 10
        sock.close()
    assert "Traceback" not in server.stderr and "CancelledError" not in server.stderr, server.stderr
    assert "Cancel 1 running task(s)" in server.stderr  # one line says what happened
