"""`chitchat serve`'s security: the bearer token, the key checked at start, the Host check,
cross-site requests refused, security headers, and what /info and the logs show."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess

import httpx
import pytest

from chitchat.cli import build_parser
from chitchat.errors import ChitchatError
from chitchat.serve.app import create_app
from chitchat.commands.serve import config_from_args
from chitchat.serve.security import RateLimit

from support import PYTHON, ROOT, cli_env
from serve_helpers import KEY, config, error_of, serve, serve_process


# -- auth -----------------------------------------------------------------------------------------

def test_bearer_token(engine):
    with serve(engine, api_key=KEY) as c:
        error_of(c.post("/generate", json={"text": "你好"}), 401)
        r = c.post("/generate", json={"text": "你好"}, headers={"Authorization": "Bearer wrong"})
        assert error_of(r, 401) and r.headers["www-authenticate"] == "Bearer"
        for wrong in (KEY, f"Basic {KEY}", f"Bearer{KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}"):
            error_of(c.post("/sessions", headers={"Authorization": wrong}), 401)
        error_of(c.post("/generate", content=b"x" * 10_000), 401)  # no token: refused before anything else
        ok = {"Authorization": f"Bearer {KEY}"}
        assert c.post("/generate", json={"text": "你好"}, headers=ok).status_code == 200
        # issue 25, N11: the scheme's name is case-insensitive (RFC 9110), the token is not
        for scheme in ("bearer", "BEARER", "bEaReR"):
            assert c.get("/info", headers={"Authorization": f"{scheme} {KEY}"}).status_code == 200, scheme
        assert c.get("/info", headers={"Authorization": f"Bearer   {KEY}"}).status_code == 200
        error_of(c.get("/info", headers={"Authorization": f"Bearer {KEY.upper()}"}), 401)
        assert c.get("/info", headers=ok).json()["auth"] is True
        assert c.get("/healthz").status_code == 200  # open: for load balancers
        doc = c.get("/openapi.json").json()
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert doc["paths"]["/generate"]["post"]["security"] == [{"bearer": []}]
        assert doc["paths"]["/healthz"]["get"]["security"] == []


def test_no_token_needed_when_auth_is_off(client):
    r = client.post("/generate", json={"text": "你好"}, headers={"Authorization": "Bearer anything"})
    assert r.status_code == 200


def test_api_key_comes_from_the_environment(monkeypatch):
    args = build_parser("serve").parse_args(["serve", "--model", "m"])
    monkeypatch.delenv("CHITCHAT_API_KEY", raising=False)
    assert config_from_args(args).api_key is None
    monkeypatch.setenv("CHITCHAT_API_KEY", KEY)
    assert config_from_args(args).api_key == KEY


@pytest.mark.parametrize("key, problem", [("", "empty"), ("k", "1 characters"), ("s3cret-s3cret12", "15 characters")])
def test_an_empty_or_short_key_is_refused_at_start(engine, monkeypatch, key, problem):
    # issue 25, N5: an empty key served with no auth and no warning, and a 1-character key was taken
    monkeypatch.setenv("CHITCHAT_API_KEY", key)
    with pytest.raises(ChitchatError, match=problem):
        config_from_args(build_parser("serve").parse_args(["serve", "--model", "m"]))
    with pytest.raises(ChitchatError, match=problem):
        create_app(engine, config(api_key=key))
    assert create_app(engine, config(api_key="s3cret-s3cret123"))  # 16 characters: enough


# -- the key, checked at start ----------------------------------------------------------------------

@pytest.mark.parametrize("key", ["密钥", "s3cret ", "tab\there", "é"])
def test_a_key_http_cannot_carry_is_refused_at_start(engine, monkeypatch, key):
    # issue 20, finding 5: such a key started "fine", then every request was a 500
    with pytest.raises(ChitchatError, match="CHITCHAT_API_KEY"):
        create_app(engine, config(api_key=key))
    monkeypatch.setenv("CHITCHAT_API_KEY", key)
    with pytest.raises(ChitchatError, match="visible ASCII"):
        config_from_args(build_parser("serve").parse_args(["serve", "--model", "m"]))


def test_the_serve_command_refuses_such_a_key_in_one_line():
    r = subprocess.run([PYTHON, "-m", "chitchat", "serve", "--model", "m"], cwd=ROOT, capture_output=True, text=True,
                       env={**cli_env(), "CHITCHAT_API_KEY": "密钥"}, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("chitchat serve: error: CHITCHAT_API_KEY")
    assert len(r.stderr.strip().splitlines()) == 1


def test_any_visible_ascii_key_works(engine):
    key = "s3cret-_.~+/=!\"#$%&'()*,;<>?@[\\]^`{|}"
    with serve(engine, api_key=key) as c:
        assert c.get("/info", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        error_of(c.get("/info", headers={"Authorization": f"Bearer {key[:-1]}"}), 401)


# -- the Host check ---------------------------------------------------------------------------------

def test_only_loopback_host_names_are_served_by_default(engine):
    # issue 20, finding 3: any Host was served, so a key-less loopback server was open to DNS rebinding
    with serve(engine) as c:
        for host in ("attacker.example:8000", "attacker.example", "127.0.0.2:8000", "localhost.attacker.example"):
            assert "Host" in error_of(c.get("/info", headers={"Host": host}), 400)
            error_of(c.post("/sessions", headers={"Host": host}), 400)
        for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "[::1]", "LOCALHOST:1"):
            assert c.get("/info", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_for_a_deployment_behind_a_proxy(engine):
    with serve(engine, allowed_hosts="chat.example.com, api.example.com") as c:
        assert c.get("/healthz", headers={"Host": "chat.example.com"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "api.example.com:443"}).status_code == 200
        error_of(c.get("/healthz", headers={"Host": "localhost:8000"}), 400)
    with serve(engine, allowed_hosts="*") as c:
        assert c.get("/healthz", headers={"Host": "anything.example"}).status_code == 200
    parse = build_parser("serve").parse_args
    assert config_from_args(parse(["serve"])).allowed_hosts is None  # loopback: the loopback names
    assert config_from_args(parse(["serve", "--host", "::1"])).allowed_hosts is None
    assert config_from_args(parse(["serve", "--host", "0.0.0.0"])).allowed_hosts == "*"
    assert config_from_args(parse(["serve", "--host", "0.0.0.0", "--allowed-hosts", "a.example"])).hosts() == (
        "a.example",)


# -- requests from other sites ----------------------------------------------------------------------

def test_state_changing_requests_from_another_site_are_refused(engine):
    # issue 20, finding 1: a page on another origin created sessions with no-cors POSTs
    with serve(engine) as c:
        sid = c.post("/sessions").json()["id"]
        for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"},
                        {"Origin": "http://localhost:9999"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost"}):
            assert "another" in error_of(c.post("/sessions", headers=headers), 403)
            error_of(c.post(f"/sessions/{sid}/messages", json={"text": "你好"}, headers=headers), 403)
            error_of(c.delete(f"/sessions/{sid}", headers=headers), 403)
        # what a cross-site form or no-cors fetch can send: a form or text body
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            assert "Content-Type" in error_of(c.post("/sessions", content=b"x", headers={"Content-Type": kind}), 422)
        assert c.get(f"/sessions/{sid}").json()["turns"] == 0 and c.get("/info").json()["sessions"] == 1
        # the page itself (same origin), and clients outside a browser, are served
        same = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
        assert c.post("/sessions", headers=same).status_code == 201
        assert c.post(f"/sessions/{sid}/messages", json={"text": "你好"}, headers=same).status_code == 200
        assert c.post("/sessions", headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 201
        assert c.get("/info", headers={"Origin": "http://attacker.example"}).status_code == 200  # reads: CORS


def test_session_creation_is_rate_limited_per_client(engine):
    with serve(engine, max_sessions=100, session_burst=5, session_rate=6) as c:
        assert [c.post("/sessions").status_code for _ in range(5)] == [201] * 5
        r = c.post("/sessions")
        assert "too many" in error_of(r, 429) and 1 <= int(r.headers["retry-after"]) <= 10
    now = [0.0]
    limit = RateLimit(per_minute=60, burst=2, clock=lambda: now[0], max_clients=3)
    assert limit.take("a") == 0 and limit.take("a") == 0 and limit.take("a") == pytest.approx(1.0)
    assert limit.take("b") == 0  # another client has its own bucket
    now[0] = 1.0
    assert limit.take("a") == 0 and limit.refused == 1
    for client in "cdefg":  # bounded: refilled buckets are dropped, then all but the most recent
        limit.take(client)
        assert len(limit.buckets) <= 3
    assert "g" in limit.buckets


# -- headers ----------------------------------------------------------------------------------------

def test_security_headers(engine):
    # issue 20, finding 4: no CSP, no frame protection, no nosniff, session data cacheable
    with serve(engine, api_key=KEY) as c:
        page = c.get("/")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "http" not in csp
        script = re.search(r"<script>(.*?)</script>", page.text, re.S).group(1)
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"script-src 'sha256-{digest}'" in csp and "unsafe-inline" not in csp
        auth = {"Authorization": f"Bearer {KEY}"}
        sid = c.post("/sessions", headers=auth).json()["id"]
        for r in (page, c.get(f"/sessions/{sid}", headers=auth), c.get("/healthz"), c.get("/nowhere"),
                  c.post(f"/sessions/{sid}/messages", json={"text": "你好"}, headers=auth)):
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
            assert r.headers["referrer-policy"] == "no-referrer"
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        for r in (c.get(f"/sessions/{sid}", headers=auth), c.post("/sessions", headers=auth)):
            assert r.headers["cache-control"] == "no-store"
        error_of(c.get("/redoc", headers=auth), 404)  # ReDoc is off


def test_docs_are_served_locally_under_a_strict_policy(engine):
    # issue 25, N13: /docs was behind the key (a browser cannot send it to open a page), and loaded
    # Swagger UI from a CDN under a policy with 'unsafe-inline'
    with serve(engine, api_key=KEY) as c:
        page = c.get("/docs")  # open, like /openapi.json: the key goes into Swagger UI's Authorize
        assert page.status_code == 200 and "SwaggerUIBundle" in page.text
        csp = page.headers["content-security-policy"]
        assert "unsafe" not in csp and "http" not in csp and "default-src 'none'" in csp
        script = re.search(r"<script>(.*?)</script>", page.text, re.S).group(1)
        assert base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() in csp
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith("/docs/") for s in sources), sources  # nothing from elsewhere
        for src in sources:
            r = c.get(src)
            assert r.status_code == 200 and len(r.content) > 1000, src
        assert c.get("/docs/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
        error_of(c.get("/docs/anything.js"), 401)  # only the page and its files are open
        doc = c.get("/openapi.json").json()  # the bearer scheme: what makes the Authorize button
        assert doc["openapi"].startswith("3.1") and doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# -- what the server tells -------------------------------------------------------------------------

def test_info_shows_paths_only_to_key_holders(engine, model_dirs):
    with serve(engine, api_key=KEY) as c:
        info = c.get("/info", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["model"] == "models0/dialogue" and info["paths"]["model"] == str(model_dirs[0])


def test_session_ids_never_reach_the_access_log(model_dirs):
    # issue 20, finding 7: session ids (bearer capabilities) were written to the access log
    with serve_process(model_dirs, "--log-level", "info") as server:
        sid = httpx.post(server.url + "/sessions").json()["id"]
        httpx.post(f"{server.url}/sessions/{sid}/messages", json={"text": "你好"}, timeout=30)
        httpx.get(f"{server.url}/sessions/{sid}")
        httpx.delete(f"{server.url}/sessions/{sid}")
    log = server.stdout + server.stderr
    assert "POST /sessions/{id}/messages" in log and "DELETE /sessions/{id}" in log  # the access log is on
    assert sid not in log and str(model_dirs[0]) not in log
