"""`chitchat serve`: a session message's `ranking` setting, the server's --ranking, bad values."""

from __future__ import annotations

from chitchat.engine.ranking import DEFAULT_RANKING
from chitchat.engine.settings import ReplySettings

from serve_helpers import error_of, serve


def test_a_turn_can_be_ranked_another_way(client):
    assert client.get("/info").json()["settings"]["ranking"] == DEFAULT_RANKING
    sid = client.post("/sessions").json()["id"]
    turn = client.post(f"/sessions/{sid}/messages", json={"text": "你好", "settings": {"ranking": "mmi+0.5*pmi"}}).json()
    assert turn["ranking"] == "mmi+0.5*pmi"
    assert all({"likelihood", "mmi", "pmi"} <= set(c["scores"]) for c in turn["candidates"])
    plain = client.post(f"/sessions/{sid}/messages", json={"text": "今天好累"}).json()
    assert plain["ranking"] == "mmi"  # the default ranking on a model with no index


def test_a_bad_ranking_is_a_422_naming_the_setting(client):
    sid = client.post("/sessions").json()["id"]
    error_of(client.post(f"/sessions/{sid}/messages", json={"text": "你好", "settings": {"ranking": "bleu"}}),
             422, "settings.ranking")
    error_of(client.post(f"/sessions/{sid}/messages", json={"text": "你好", "settings": {"ranking": 3}}), 422)


def test_the_servers_ranking_is_the_default_of_every_request(engine):
    with serve(engine, settings=ReplySettings(max_len=6, candidates=3, ranking="pmi")) as client:
        assert client.get("/info").json()["settings"]["ranking"] == "pmi"
        out = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "你好"}]})
        sid = client.post("/sessions").json()["id"]
        assert out.status_code == 200
        assert client.post(f"/sessions/{sid}/messages", json={"text": "你好"}).json()["ranking"] == "pmi"


def test_tiny_and_large_weights_are_read_and_written_back(engine):
    """Issue 25, N9: weights written with exponents (1e-05, 1e+06) once failed to parse back."""
    with serve(engine, settings=ReplySettings(max_len=6, candidates=3, ranking="1000000*mmi")) as client:
        assert client.get("/info").json()["settings"]["ranking"] == "1000000*mmi"
        sid = client.post("/sessions").json()["id"]
        turn = client.post(f"/sessions/{sid}/messages", json={"text": "你好", "settings": {"ranking": "mmi+0.00001*pmi"}})
        assert turn.status_code == 200 and turn.json()["ranking"] == "mmi+0.00001*pmi"
        turn = client.post(f"/sessions/{sid}/messages", json={"text": "你好", "settings": {"ranking": "1e-5*pmi+mmi"}})
        assert turn.status_code == 200 and turn.json()["ranking"] == "0.00001*pmi+mmi"
