"""The batching model worker of `chitchat serve` (chitchat.serve.worker)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from dataclasses import replace

import pytest

from chitchat.errors import ChitchatError
from chitchat.engine.replies import ReplyStep
from chitchat.serve.worker import ModelWorker, WorkerUnavailable
from chitchat.engine.settings import ReplySettings

from serve_helpers import serve, Spy, error_of, wait_for


# -- the model worker -----------------------------------------------------------------------------

class FakeEngine:
    """Replies with the last utterance upper-cased and records each call; the call for "wait" holds
    until `gate` is set, so that the requests sent meanwhile queue up; "bad" fails its call."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple[list, int | None]] = []
        self.delay = delay
        self.entered, self.gate = threading.Event(), threading.Event()

    def replies_stream(self, histories, settings, generator=None):
        last = [h[-1] for h in histories]
        self.calls.append((last, [g.initial_seed() for g in generator] if generator else None))
        if "wait" in last:
            self.entered.set()
            assert self.gate.wait(10)
        time.sleep(self.delay)
        if "bad" in last:
            raise ChitchatError("bad history")
        yield ReplyStep(1, {})
        return [type("R", (), {"text": t.upper()})() for t in last]

    def streams(self, settings) -> bool:
        return settings.candidates == 1


def run_worker(worker, engine, first: str, then: list, gap: float = 0.0):
    """Send `first`, then (once it is being answered) each of `then`, `gap` seconds apart; the results."""
    async def main():
        jobs = [asyncio.ensure_future(worker.reply(*first))]
        await asyncio.to_thread(engine.entered.wait, 10)
        for args in then:
            jobs.append(asyncio.ensure_future(worker.reply(*args)))
            await asyncio.sleep(gap)
        engine.gate.set()
        return await asyncio.gather(*jobs, return_exceptions=True)

    try:
        return asyncio.run(main())
    finally:
        worker.stop()


def test_worker_batches_the_requests_that_wait_together():
    engine, s, other = FakeEngine(), ReplySettings(), ReplySettings(max_len=3)
    worker = ModelWorker(engine, window_ms=0, max_batch=8)
    then = [([t], s) for t in "abcde"] + [(["f"], other), (["g"], replace(s, seed=1)), (["h"], replace(s, seed=1)), (["i"], s)]
    results = run_worker(worker, engine, (["wait"], s), then)
    assert [r.text for r in results] == ["WAIT"] + list("ABCDEFGHI")
    # queued while "wait" was answered: a batch of 8 (max_batch), in 2 engine calls (the same settings
    # together, the seeded ones too, each with a generator of its own seed), then "i"
    assert [last for last, _ in engine.calls] == [["wait"], list("abcdegh"), ["f"], ["i"]]
    assert engine.calls[1][1][5:] == [1, 1]
    assert worker.largest_batch == 8 and worker.answered == 10 and worker.calls == 4


def test_worker_waits_for_as_many_requests_as_it_recently_had():
    engine, s = FakeEngine(), ReplySettings()
    worker = ModelWorker(engine, window_ms=300, max_batch=8)
    t0 = time.monotonic()
    assert asyncio.run(worker.reply(["lone"], s)).text == "LONE"
    assert time.monotonic() - t0 < 0.25  # a lone client does not wait for the window
    worker.recent = 3  # as when 3 clients were served: their next requests, 50 ms apart, make one batch

    async def spaced():
        jobs = []
        for t in "abc":
            jobs.append(asyncio.ensure_future(worker.reply([t], s)))
            await asyncio.sleep(0.05)
        return await asyncio.gather(*jobs)

    assert [r.text for r in asyncio.run(spaced())] == list("ABC")
    worker.stop()
    assert [last for last, _ in engine.calls] == [["lone"], list("abc")]


def test_one_failing_request_does_not_fail_its_batch():
    engine, s = FakeEngine(), ReplySettings()
    worker = ModelWorker(engine, window_ms=0)
    _, ok, bad, fine = run_worker(worker, engine, (["wait"], s), [(["ok"], s), (["bad"], s), (["fine"], s)])
    assert ok.text == "OK" and fine.text == "FINE" and isinstance(bad, ChitchatError)
    assert engine.calls[1][0] == ["ok", "bad", "fine"] and len(engine.calls) == 5  # then each alone


def test_worker_stop_answers_every_queued_request():
    engine = FakeEngine(delay=0.05)
    worker = ModelWorker(engine, window_ms=0, max_batch=1)

    async def main():
        jobs = [asyncio.ensure_future(worker.reply([t], ReplySettings())) for t in "abcde"]
        await asyncio.sleep(0.02)  # all queued, the first being answered
        await asyncio.to_thread(worker.stop)
        with pytest.raises(WorkerUnavailable):
            await worker.reply(["late"], ReplySettings())
        return [j.result().text for j in jobs if j.done()]

    assert asyncio.run(main()) == list("ABCDE")
    assert not worker.thread.is_alive() and len(engine.calls) == 5


def test_full_queue_is_a_503(engine, monkeypatch):
    spy = Spy(engine, monkeypatch, hold=True)
    with serve(engine, max_queue=1, max_batch=1) as c:
        first = threading.Thread(target=lambda: c.post("/generate", json={"text": "一"}))
        first.start()
        assert spy.entered.wait(10)
        r = c.post("/generate", json={"text": "二"})
        assert error_of(r, 503) and r.headers["retry-after"] == "1"
        spy.release.set()
        first.join(30)


def test_concurrent_requests_share_engine_calls(engine, monkeypatch):
    spy = Spy(engine, monkeypatch, hold=True)
    with serve(engine, batch_window_ms=100) as c:
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(c.post("/generate", json={"text": f"第{i}个"})))
                   for i in range(8)]
        threads[0].start()
        assert spy.entered.wait(10)  # the first is being answered; the other seven queue up meanwhile
        for t in threads[1:]:
            t.start()
        wait_for(lambda: c.app.state.worker.waiting == 8)
        spy.release.set()
        for t in threads:
            t.join(30)
        assert [r.status_code for r in results] == [200] * 8
        assert len(spy.calls) == 2 and len(spy.calls[1][0]) == 7
        assert c.get("/info").json()["worker"]["largest_batch"] == 7


def test_what_lives_as_long_as_the_server_is_out_of_the_collectors_sight(engine):
    """Issue 25, N6: a full garbage collection over the libraries and models stalls the event loop
    and the worker at once; the server freezes what is alive at start, and thaws it when it stops."""
    before = gc.get_freeze_count()
    with serve(engine) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > before + 10_000  # torch, transformers, the models
    assert gc.get_freeze_count() == 0
