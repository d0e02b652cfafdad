"""The model worker's lanes (chitchat.serve.worker): a large group of requests answered as shards
at once, one thread each, on the real engine (tiny random models)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest
import torch

import chitchat.engine.engine as engine_module
from chitchat.engine.engine import Engine
from chitchat.serve.worker import ModelWorker
from chitchat.engine.settings import ReplySettings

HISTORY = ["你好", "今天过得怎么样"]
MMI5 = ReplySettings(candidates=5, min_len=3, max_len=6)


@pytest.fixture(scope="module")
def lane_engine(model_dirs):
    return Engine.load(*model_dirs, threads=2)


def count_mmi_calls(engine, monkeypatch) -> list[tuple[str, int]]:
    """Each MMI scoring call's thread name and number of sequences, as the calls are made."""
    calls = []
    score = type(engine.mmi).sequence_nll

    def spy(model, sequences, starts, pad_id=0):
        if not calls or calls[-1][2] is not sequences:  # sequence_nll cuts a long batch into groups itself
            calls.append((threading.current_thread().name, len(sequences), sequences))
        return score(model, sequences, starts, pad_id)

    monkeypatch.setattr(type(engine.mmi), "sequence_nll", spy)
    return calls


def ask_together(worker: ModelWorker, n: int, settings: ReplySettings = MMI5, seed: int | None = None):
    """`n` requests queued at the same moment (the worker waits for as many as it recently had)."""
    async def main():
        jobs = [worker.submit(HISTORY, replace(settings, seed=seed)) for _ in range(n)]
        return await asyncio.gather(*(j.future for j in jobs))

    worker.recent = n
    try:
        return asyncio.run(main())
    finally:
        worker.stop()


@pytest.mark.parametrize("lanes", [1, 2])
def test_concurrent_mmi5_requests_share_one_call_per_lane_and_one_mmi_scoring_each(lane_engine, monkeypatch, lanes):
    calls = count_mmi_calls(lane_engine, monkeypatch)
    monkeypatch.setattr(engine_module, "SCORE_TOKENS", 10 ** 6)  # a call's candidates scored in one part
    threads = torch.get_num_threads()
    worker = ModelWorker(lane_engine, window_ms=5000, max_batch=8, lanes=lanes, lane_rows=10)
    replies = ask_together(worker, 8)
    assert worker.answered == 8 and worker.largest_batch == 8
    assert worker.calls == lanes and worker.split == (lanes > 1)  # 8 requests x 5 candidates: 2 lanes of 20 rows
    assert len(calls) == lanes  # one MMI scoring per engine call, never one per request
    assert sum(n for _, n, _ in calls) <= 40 and all(n >= 1 for _, n, _ in calls)
    if lanes > 1:
        assert any(name.startswith("chitchat-lane") for name, _, _ in calls)  # the shards ran on two threads
    assert torch.get_num_threads() == threads  # the lanes' one-thread setting does not outlast them
    for r in replies:
        assert r.ranking == "mmi" and len(r.candidates) == 5 and r.text
        assert all("mmi" in c.scores for c in r.candidates if not c.empty)


def test_small_and_seeded_groups_are_not_split(lane_engine, monkeypatch):
    calls = count_mmi_calls(lane_engine, monkeypatch)
    monkeypatch.setattr(engine_module, "SCORE_TOKENS", 10 ** 6)  # a call's candidates scored in one part
    worker = ModelWorker(lane_engine, window_ms=5000, max_batch=8, lanes=2, lane_rows=10)
    assert len(ask_together(worker, 3)) == 3  # 15 rows: fewer than 2 lanes of 10
    assert (worker.calls, worker.split, len(calls)) == (1, 0, 1)
    worker = ModelWorker(lane_engine, window_ms=0, lanes=2, lane_rows=1)
    one = ask_together(worker, 1, seed=7)[0]
    assert (worker.calls, worker.split) == (1, 0)
    assert one.text == lane_engine.reply(HISTORY, replace(MMI5, seed=7)).text  # its seed alone decides it


def test_requests_with_their_own_seeds_share_one_call_and_get_their_seeds_replies(lane_engine):
    """Issue 25, N7: seeded requests batch together; each still gets the reply its seed gives alone."""
    worker = ModelWorker(lane_engine, window_ms=5000, max_batch=8, lanes=1)
    histories = [HISTORY, ["我们去吃火锅吧", "好啊", "几点出发"]] * 4

    async def main():
        jobs = [worker.submit(h, replace(MMI5, seed=i)) for i, h in enumerate(histories)]
        return await asyncio.gather(*(j.future for j in jobs))

    worker.recent = len(histories)
    try:
        replies = asyncio.run(main())
    finally:
        worker.stop()
    assert worker.calls == 1 and worker.answered == 8
    assert [r.text for r in replies] == [lane_engine.reply(h, replace(MMI5, seed=i)).text for i, h in enumerate(histories)]


def test_engine_calls_on_two_threads_at_once_give_the_replies_of_calls_one_after_another(lane_engine):
    """Lanes share the models and borrow their own buffers (key/value cache, MMI logits)."""
    histories = [HISTORY, ["我们去吃火锅吧", "好啊", "几点出发"]]
    alone = [lane_engine.reply(h, replace(MMI5, seed=i)) for i, h in enumerate(histories)]
    lane = lane_engine.with_threads(None)
    together: list = [None, None]

    def run(i):
        torch.set_num_threads(1)
        together[i] = lane.reply(histories[i], replace(MMI5, seed=i))

    threads = torch.get_num_threads()
    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    torch.set_num_threads(threads)
    for a, b in zip(alone, together):
        assert a.text == b.text and [c.text for c in a.candidates] == [c.text for c in b.candidates]
        assert [c.scores["mmi"] for c in a.candidates] == pytest.approx([c.scores["mmi"] for c in b.candidates], rel=1e-4)
