"""`chitchat serve` sessions: their lifecycle, the history the model sees, a full store, expiry,
the order of one session's turns, and the rate of creation per client."""

from __future__ import annotations

import threading
import time

from chitchat.serve.sessions import SessionStore

from serve_helpers import serve, Spy, error_of


# -- sessions -------------------------------------------------------------------------------------

def test_session_lifecycle(client):
    r = client.post("/sessions")
    assert r.status_code == 201
    sid = r.json()["id"]
    first = client.post(f"/sessions/{sid}/messages", json={"text": "你好"}).json()
    assert first["id"] == sid and first["reply"] and first["turns"] == 1 and first["kept"]
    assert first["history"] == ["你好", first["reply"]]
    second = client.post(f"/sessions/{sid}/messages", json={"text": "今天 好累"}).json()
    assert second["turns"] == 2
    assert second["history"] == ["今天好累", second["reply"]]  # bounded: max_history_len - 1
    assert client.get(f"/sessions/{sid}").json() == {"id": sid, "history": second["history"], "turns": 2}
    assert client.delete(f"/sessions/{sid}").json() == {"id": sid, "deleted": True}
    for r in (client.delete(f"/sessions/{sid}"), client.get(f"/sessions/{sid}"),
              client.post(f"/sessions/{sid}/messages", json={"text": "在吗"}), client.get("/sessions/nope")):
        error_of(r, 404)
    error_of(client.post(f"/sessions/{sid}/messages", json={"text": 3}), 422, "text")


def test_the_model_sees_the_session_history(client, engine, monkeypatch):
    spy = Spy(engine, monkeypatch)
    sid = client.post("/sessions").json()["id"]
    reply = client.post(f"/sessions/{sid}/messages", json={"text": "一"}).json()["reply"]
    client.post(f"/sessions/{sid}/messages", json={"text": "二"})
    assert [c[0] for c in spy.calls] == [[["一"]], [["一", reply, "二"]]]


def test_a_full_store_refuses_new_sessions_and_keeps_every_held_one_whole(engine):
    # issue 20, finding 1: a full store used to evict the least recently used session, so that any
    # client could wipe every other's by creating sessions
    with serve(engine, max_sessions=2) as c:
        a, b = c.post("/sessions").json()["id"], c.post("/sessions").json()["id"]
        history = c.post(f"/sessions/{a}/messages", json={"text": "你好"}).json()["history"]
        c.post(f"/sessions/{b}/messages", json={"text": "在吗"})
        for _ in range(5):
            r = c.post("/sessions")
            assert "most sessions" in error_of(r, 503) and int(r.headers["retry-after"]) >= 1
        assert c.get(f"/sessions/{a}").json()["history"] == history
        assert c.get(f"/sessions/{b}").json()["turns"] == 1
        assert c.post(f"/sessions/{a}/messages", json={"text": "再见"}).json()["turns"] == 2
        assert c.delete(f"/sessions/{b}").json()["deleted"]  # room for one more
        new = c.post("/sessions").json()["id"]
        assert c.post(f"/sessions/{new}/messages", json={"text": "早"}).status_code == 200
        assert c.get("/info").json()["sessions"] == 2
        assert c.app.state.sessions.refused == 5


def test_a_session_deleted_during_its_turn_still_gets_its_reply(engine, monkeypatch):
    spy = Spy(engine, monkeypatch, hold=True)
    with serve(engine, max_sessions=1) as c:
        sid = c.post("/sessions").json()["id"]
        out = {}
        turn = threading.Thread(target=lambda: out.update(r=c.post(f"/sessions/{sid}/messages", json={"text": "你好"})))
        turn.start()
        assert spy.entered.wait(10)
        error_of(c.post("/sessions"), 503)  # full: the session being answered stays
        assert c.delete(f"/sessions/{sid}").json()["deleted"]  # deleted while its reply is computed
        other = c.post("/sessions").json()["id"]
        spy.release.set()
        turn.join(30)
        assert out["r"].status_code == 200 and out["r"].json()["reply"] and out["r"].json()["kept"] is False
        error_of(c.get(f"/sessions/{sid}"), 404)
        assert c.get(f"/sessions/{other}").json()["turns"] == 0


def test_idle_sessions_expire(engine):
    now = [0.0]
    with serve(engine, session_idle_s=60) as c:
        c.app.state.sessions.clock = lambda: now[0]
        old = c.post("/sessions").json()["id"]
        now[0] = 50
        fresh = c.post("/sessions").json()["id"]
        now[0] = 100  # old idle for 100 s, fresh for 50 s
        error_of(c.get(f"/sessions/{old}"), 404)
        assert c.get(f"/sessions/{fresh}").status_code == 200
        assert c.app.state.sessions.expired == 1


def test_session_store_bounds():
    now = [0.0]
    store = SessionStore(max_sessions=3, idle_s=10, max_history_len=3, clock=lambda: now[0])
    ids = [store.create() for _ in range(3)]
    store.record(ids[0], "u1", "b1")
    store.record(ids[0], "u2", "b2")
    assert store.get(ids[0]).history == ["u2", "b2"] and store.get(ids[0]).turns == 2
    now[0] = 4
    assert store.create() is None and store.refused == 1  # full: nothing is pushed out
    assert all(store.get(i) is not None for i in ids) and store.get(ids[0]).history == ["u2", "b2"]
    assert store.retry_after() == 10  # all were used at 4 s: the least recently used expires at 14 s
    assert store.delete(ids[1]) and store.record(ids[1], "u", "b") is None  # a turn ending after its session left
    now[0] = 15
    assert len(store) == 0 and store.expired == 2
    assert store.create() is not None  # expired sessions make room
    one = SessionStore(2, 10, max_history_len=1)  # the model sees the new utterance alone: nothing to keep
    sid = one.create()
    assert one.record(sid, "u", "b").history == []


def test_turns_of_one_session_run_in_order(engine, monkeypatch):
    spy = Spy(engine, monkeypatch, hold=True)
    with serve(engine) as c:
        sid = c.post("/sessions").json()["id"]
        out = {}
        threads = [threading.Thread(target=lambda t=t: out.__setitem__(t, c.post(f"/sessions/{sid}/messages",
                                                                                   json={"text": t}).json()))
                   for t in ("一", "二")]
        threads[0].start()
        assert spy.entered.wait(10)
        threads[1].start()
        time.sleep(0.2)
        assert len(spy.calls) == 1  # the second turn waits for the first
        spy.release.set()
        for t in threads:
            t.join(30)
    assert spy.calls[1][0] == [["一", out["一"]["reply"], "二"]] and out["二"]["turns"] == 2
