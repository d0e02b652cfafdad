"""`chitchat serve`: a session message's `ranking` setting, the server's --ranking, bad values."""

from __future__ import annotations

from chitchat.engine.ranking import DEFAULT_RANKING
from chitchat.engine.settings import ChatSettings
from chitchat.model.sampling import SamplingConfig

from serve_helpers import error_of, serve


def test_a_turn_can_be_ranked_another_way(client):
    assert client.get("/info").json()["settings"]["ranking"] == DEFAULT_RANKING
    sid = client.post("/sessions").json()["id"]
    turn = client.post(f"/sessions/{sid}/messages", json={"text": "你好", "settings": {"ranking": "mmi+0.5*pmi"}}).json()
    assert turn["ranking"] == "mmi+0.5*pmi"
    assert all(c["mmi"] is not None and c["nll_empty"] is not None for c in turn["candidates"])
    plain = client.post(f"/sessions/{sid}/messages", json={"text": "今天好累"}).json()
    assert plain["ranking"] == DEFAULT_RANKING


def test_a_bad_ranking_is_a_422_naming_the_setting(client):
    sid = client.post("/sessions").json()["id"]
    error_of(client.post(f"/sessions/{sid}/messages", json={"text": "你好", "settings": {"ranking": "bleu"}}),
             422, "settings")
    error_of(client.post(f"/sessions/{sid}/messages", json={"text": "你好", "settings": {"ranking": 3}}), 422)


def test_the_servers_ranking_is_the_default_of_every_request(engine):
    with serve(engine, settings=ChatSettings(SamplingConfig(max_len=6, candidates=3), ranking="pmi")) as client:
        assert client.get("/info").json()["settings"]["ranking"] == "pmi"
        out = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "你好"}]})
        sid = client.post("/sessions").json()["id"]
        assert out.status_code == 200
        assert client.post(f"/sessions/{sid}/messages", json={"text": "你好"}).json()["ranking"] == "pmi"
