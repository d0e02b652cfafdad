"""Streaming in `chitchat serve`: chat completions and session turns as server-sent events, clients
leaving mid-stream, and streams sharing decoding steps with other requests."""

from __future__ import annotations

import asyncio
import json

import httpx

from chitchat.serve.worker import ModelWorker
from chitchat.engine.settings import ReplySettings

from support import running_server
from serve_helpers import USER, serve, Spy, error_of, wait_for, sse, one_candidate


# -- streaming ------------------------------------------------------------------------------------

def test_chat_completion_streams_one_candidate_as_it_is_written(engine):
    with serve(engine, **one_candidate()) as c:
        body = {"messages": USER, "seed": 4}
        plain = c.post("/v1/chat/completions", json=body).json()
        events = sse(c.post("/v1/chat/completions",
                            json={**body, "stream": True, "stream_options": {"include_usage": True}}).text)
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [e["choices"][0]["delta"]["content"] for e in events[1:-3]]
    assert len(pieces) >= 8 and all(pieces)  # a piece per token, not the reply at once
    assert "".join(pieces) == plain["choices"][0]["message"]["content"]  # as the batch call, same seed
    assert events[-3]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert events[-2]["usage"] == plain["usage"]


def test_session_turn_with_settings_and_candidates(client):
    sid = client.post("/sessions").json()["id"]
    turn = client.post(f"/sessions/{sid}/messages", json={"text": "你好", "settings": {
        "candidates": 2, "mmi": False, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "max_history_len": 5}}).json()
    assert len(turn["candidates"]) == 2 and turn["ranking"] == "likelihood"
    assert turn["reply"] == turn["candidates"][turn["chosen"]]["text"]
    turn = client.post(f"/sessions/{sid}/messages", json={"text": "在干嘛", "settings": {"max_history_len": 5}}).json()
    assert len(turn["history"]) == 4 and turn["ranking"] == "mmi" and len(turn["candidates"]) == 3
    turn = client.post(f"/sessions/{sid}/messages", json={"text": "好吧"}).json()
    assert len(turn["history"]) == 2  # the server's max_history_len, 3
    for bad in ({"candidates": 0}, {"candidates": 9}, {"temperature": -1}, {"top_p": 2}, {"mmi": "yes"}, []):
        error_of(client.post(f"/sessions/{sid}/messages", json={"text": "嗯", "settings": bad}), 422)


def test_session_turn_streams(engine):
    with serve(engine, **one_candidate()) as c:
        sid = c.post("/sessions").json()["id"]
        events = sse(c.post(f"/sessions/{sid}/messages", json={"text": "你好", "stream": True, "seed": 2}).text)
        deltas = [e["text"] for e in events if e["type"] == "delta"]
        final = events[-1]
        assert len(deltas) >= 8 and final["type"] == "reply" and "".join(deltas) == final["reply"]
        assert final["turns"] == 1 and final["history"] == ["你好", final["reply"]]
        assert c.get(f"/sessions/{sid}").json()["turns"] == 1
        # several candidates: the chosen reply once ranked, in one piece
        events = sse(c.post(f"/sessions/{sid}/messages",
                            json={"text": "嗯", "stream": True, "settings": {"candidates": 3}}).text)
        assert [e["type"] for e in events] == ["delta", "reply"] and events[0]["text"] == events[1]["reply"]
        assert len(events[1]["candidates"]) == 3
        c.delete(f"/sessions/{sid}")
        r = c.post(f"/sessions/{sid}/messages", json={"text": "嗯", "stream": True})
        error_of(r, 404)


def test_a_client_leaving_mid_stream_frees_its_place(model_dirs):
    with running_server(model_dirs, "--candidates", "1", "--min-len", "64", "--max-len", "64",
                        "--threads", "1") as server:
        body = {"messages": USER, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the role
            assert json.loads(next(line for line in lines if line)[6:])["choices"][0]["delta"]["content"]
        # gone after its first token: the worker gives it up rather than writing 64 tokens for nobody
        wait_for(lambda: httpx.get(server.url + "/info").json()["worker"]["cancelled"] == 1)
        info = httpx.get(server.url + "/info").json()["worker"]
        assert info["waiting"] == 0 and info["answered"] == 1
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": USER}, timeout=30)
        assert r.status_code == 200 and len(r.json()["choices"][0]["message"]["content"]) >= 32
        # a session turn left mid-stream: given up too, and not recorded
        sid = httpx.post(server.url + "/sessions").json()["id"]
        with httpx.stream("POST", f"{server.url}/sessions/{sid}/messages", json={"text": "你好", "stream": True},
                          timeout=30) as r:
            assert json.loads(next(line for line in r.iter_lines() if line)[6:])["type"] == "delta"
        wait_for(lambda: httpx.get(server.url + "/info").json()["worker"]["cancelled"] == 2)
        assert httpx.get(f"{server.url}/sessions/{sid}").json()["turns"] == 0
        turn = httpx.post(f"{server.url}/sessions/{sid}/messages", json={"text": "你好"}, timeout=30).json()
        assert turn["turns"] == 1  # the session's lock was let go
    assert "Traceback" not in server.stderr and "Error" not in server.stderr, server.stderr


def test_streaming_requests_share_decoding_steps_with_the_others(engine, monkeypatch):
    spy = Spy(engine, monkeypatch, hold=True)
    worker = ModelWorker(engine, window_ms=0, max_batch=8)
    one = ReplySettings(max_len=10, min_len=10, candidates=1)

    async def main():
        first = worker.submit(["一"], one)
        await asyncio.to_thread(spy.entered.wait, 10)
        jobs = [worker.submit([t], one, stream=k < 2) for k, t in enumerate(["你好", "在吗", "吃了吗"])]
        spy.release.set()
        pieces = []
        for job in jobs[:2]:
            pieces.append([])
            while (delta := await job.deltas.get()) is not None:
                pieces[-1].append(delta)
        return pieces, await asyncio.gather(*(j.future for j in [first] + jobs))

    try:
        pieces, replies = asyncio.run(main())
    finally:
        worker.stop()
    assert [c[0] for c in spy.calls] == [[["一"]], [["你好"], ["在吗"], ["吃了吗"]]]  # the 3 in one batch
    for got, reply in zip(pieces, replies[1:3]):
        assert 5 <= len(got) <= 10 and "".join(got) == reply.text  # a piece per step (a space joins the next)
    assert replies[3].text and worker.cancelled == 0
