"""The model worker of `chitchat serve`: one thread owns the engine and answers in dynamic batches.

Requests queue up from the event loop; the worker takes the first one waiting and every one queued
behind it, then waits at most `window_ms` for more until it has as many as were in the server at
once while it answered the previous batch (the clients it just answered send their next requests in
the next few milliseconds, and they join the ones that queued meanwhile; a lone client never
waits). It answers them, at most `max_batch`, with one `Engine.replies` call per group of identical
reply settings, so that the requests that arrive together share every decoding step.
A request with a `seed` shares the call too: each request's rows draw from a generator of its own
(its seed, or a random one), so its seed alone decides its reply (nucleus sampling without top-k
excepted: there a seeded request is answered on its own, chitchat.engine.sampler.shared_width). When a
batched call fails, each of its requests is answered alone, so that one request cannot fail others
(except a streaming one that has already sent text: it gets the error).

Lanes: an engine that runs on several threads (`Engine.threads`, one per core by default in the
server) answers a large group as that many shards at once, each on its own thread with one torch
thread (`lane_rows`: the least rows, requests x candidates, a shard must get). A large batch is
compute-bound (MMI scoring above all: every candidate is a sequence of the history's length), and
two threads that share every op of one call wait for each other at each of its hundreds of ops a
reply, for long when another process takes a core; independent shards do not. A small group (one
request: a lone client) still runs as one call on all the engine's threads.

The engine runs step by step (`Engine.replies_stream`). A streaming request (`submit(stream=True)`)
with one candidate gets its reply's text as each step writes it (`Job.deltas`); with several
candidates the reply is known only once they are ranked, so its text comes with the result. A
request marked `cancelled` (its client went away) leaves the batch at the next step.
`stop()` refuses new requests, answers every request already queued, then ends the thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from chitchat.engine.engine import Engine
from chitchat.engine.replies import Reply, WrittenText
from chitchat.engine.sampler import Generators, seed_generator, shared_width
from chitchat.engine.settings import ReplySettings


LANE_ROWS = 32  # a group is split into lanes only when each gets at least this many rows


class WorkerUnavailable(Exception):
    """The queue is full, or the worker is stopping."""


@dataclass(eq=False)
class Job:
    history: list[str]
    settings: ReplySettings  # whole, seed included
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    deltas: asyncio.Queue | None = None  # streaming: text as it is written, then None
    cancelled: bool = False  # set from the event loop when the client has gone
    written: WrittenText | None = None  # the text put on `deltas` so far

    @property
    def sent(self) -> str:
        return self.written.text if self.written is not None else ""

    def group_key(self):
        """Requests that can share an engine call: the same settings but the seed, each seed drawn from
        its own generator; with nucleus sampling alone (see `shared_width`) a seeded one goes alone."""
        if self.settings.seed is not None and not shared_width(self.settings):
            return ("alone", id(self))
        return replace(self.settings, seed=None)

    def post(self, callback, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # its event loop has ended: nobody is waiting
            pass


class ModelWorker:
    def __init__(self, engine: Engine, window_ms: float = 30.0, max_batch: int = 32, max_queue: int = 256,
                 lanes: int | None = None, lane_rows: int = LANE_ROWS):
        """`lanes`: shards of a large group answered at once, each on one thread (None: the
        engine's `threads`; 1: none); `lane_rows`: the least rows a shard gets."""
        self.engine = engine
        if lanes is None:
            lanes = getattr(engine, "threads", None) or 1
        self.lanes = lanes if lanes > 1 and hasattr(engine, "with_threads") else 1
        self.lane_rows = max(1, lane_rows)
        self.lane_engine = engine.with_threads(None) if self.lanes > 1 else engine  # each lane sets 1 thread
        self.pool = (ThreadPoolExecutor(self.lanes - 1, thread_name_prefix="chitchat-lane")
                     if self.lanes > 1 else None)
        self.window = window_ms / 1000
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.waiting = 0  # queued or being answered
        self.closed = False
        self.calls = 0  # Engine.replies_stream calls (a group split into lanes makes one a lane)
        self.split = 0  # groups answered in lanes
        self.answered = 0
        self.largest_batch = 0
        self.cancelled = 0  # requests given up because their client went away
        self.recent = 1  # most requests in the server at once since the current batch began
        self.thread = threading.Thread(target=self._run, name="chitchat-model", daemon=True)
        self.thread.start()

    async def reply(self, history: list[str], settings: ReplySettings) -> Reply:
        job = self.submit(history, settings)
        try:
            return await job.future
        except asyncio.CancelledError:  # the client went away: free its rows in the batch
            job.cancelled = True
            raise

    def submit(self, history: list[str], settings: ReplySettings, stream: bool = False) -> Job:
        """Queue a request (from the event loop); await `job.future` for its Reply. With `stream`
        and one candidate, `job.deltas` gets the text as it is written, then None."""
        loop = asyncio.get_running_loop()
        job = Job(history, settings, loop, loop.create_future(), deltas=asyncio.Queue() if stream else None)
        with self.lock:
            if self.closed:
                raise WorkerUnavailable("the server is shutting down")
            if self.waiting >= self.max_queue:
                raise WorkerUnavailable(f"{self.waiting} requests are waiting already; try again shortly")
            self.waiting += 1
            self.recent = max(self.recent, self.waiting)
            self.jobs.put(job)
        return job

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, answer the queued ones, end the thread."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.jobs.put(None)
        self.thread.join(timeout)
        if self.pool is not None and not self.thread.is_alive():
            self.pool.shutdown(wait=False)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            batch, stopping = [job], False
            deadline = time.monotonic() + self.window
            expected = min(self.max_batch, self.recent)
            while len(batch) < self.max_batch:
                wait = deadline - time.monotonic() if len(batch) < expected else 0.0
                try:
                    nxt = self.jobs.get(timeout=wait) if wait > 0 else self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            with self.lock:
                self.recent = self.waiting  # this batch and those queued; reply() counts the ones to come
            self.largest_batch = max(self.largest_batch, len(batch))
            groups: dict = {}
            for j in batch:
                groups.setdefault(j.group_key(), []).append(j)
            for group in groups.values():
                self._answer(group)
            if stopping:
                return

    def _answer(self, group: list[Job]) -> None:
        gone = [j for j in group if j.cancelled]  # their clients left while they were queued
        if gone:
            with self.lock:
                self._gone(len(gone))
            self._finish(gone, [None] * len(gone))
            group = [j for j in group if not j.cancelled]
            if not group:
                return
        shards = self._shards(group)
        if len(shards) > 1:
            for shard, outcome in zip(shards, self._run_lanes(shards)):
                if isinstance(outcome, Exception):
                    self._answer_alone(shard, outcome)
                else:
                    self._finish(shard, outcome)
            return
        try:
            self._count_call()
            results: list = self._run_engine(group)
        except Exception as e:  # reported to the waiting request, never ends the worker
            if len(group) > 1:
                self._answer_alone(group, e)
                return
            results = [e]
        self._finish(group, results)

    def _answer_alone(self, group: list[Job], error: Exception) -> None:
        """After `error` in a call for `group`: each of its requests answered on its own."""
        for j in group:
            if j.sent:  # its client has seen text of this attempt: it cannot start again
                self._finish([j], [error])
            else:
                j.written = None
                self._answer([j])

    def _shards(self, group: list[Job]) -> list[list[Job]]:
        """The group cut into as many lanes as have `lane_rows` rows each (at most `lanes`), in
        order; the whole group when that is one."""
        rows = len(group) * group[0].settings.total_candidates()
        k = min(self.lanes, len(group), rows // self.lane_rows)
        if k < 2:
            return [group]
        size, extra = divmod(len(group), k)
        cuts = [i * size + min(i, extra) for i in range(k + 1)]
        return [group[a:b] for a, b in zip(cuts, cuts[1:])]

    def _run_lanes(self, shards: list[list[Job]]) -> list:
        """Each shard's results (or the exception its call raised), the shards run at once: the
        first on this thread, the others on the pool's, each with one torch thread."""
        self.split += 1
        threads = torch.get_num_threads()
        try:
            others = [self.pool.submit(self._lane, shard) for shard in shards[1:]]
            return [self._lane(shards[0])] + [f.result() for f in others]
        finally:
            torch.set_num_threads(threads)

    def _lane(self, shard: list[Job]):
        torch.set_num_threads(1)  # per thread, and each lane's engine view leaves it so
        self._count_call()
        try:
            return self._run_engine(shard, self.lane_engine)
        except Exception as e:  # answered again, alone, by the worker thread
            return e

    def _gone(self, n: int) -> None:
        """`n` requests given up (their clients left), under the lock: counted, and not expected back
        (the next batch waits for as many requests as recently came, and these will not come again)."""
        self.cancelled += n
        self.recent = max(1, self.recent - n)

    def _count_call(self) -> None:
        with self.lock:
            self.calls += 1

    def _run_engine(self, group: list[Job], engine: Engine | None = None) -> list:
        """One `Engine.replies_stream` over the group: text to the streaming requests with one
        candidate as each step writes it; cancelled requests given up at the next step."""
        first, engine = group[0], engine or self.engine
        generators = Generators(seed_generator(j.settings.seed) for j in group)  # each request's own seed
        steps = engine.replies_stream([j.history for j in group], first.settings, generator=generators)
        live = engine.streams(first.settings)
        gone: set[int] = set()
        give_up = None
        try:
            while True:
                step = steps.send(give_up)
                if live:
                    for i, j in enumerate(group):
                        if j.deltas is not None:
                            j.written = j.written or WrittenText(engine)
                            if new := j.written.add(step, i):
                                j.post(j.deltas.put_nowait, new)
                give_up = {i for i, j in enumerate(group) if j.cancelled} - gone or None
                if give_up:
                    gone |= give_up
                    with self.lock:
                        self._gone(len(give_up))
        except StopIteration as end:
            return end.value

    def _finish(self, group: list[Job], results: list) -> None:
        with self.lock:
            self.waiting -= len(group)
            self.answered += len(group)
        for j, r in zip(group, results):
            if j.deltas is not None:
                j.post(j.deltas.put_nowait, None)
            j.post(_settle, j.future, r)


def _settle(future: asyncio.Future, result) -> None:
    if future.done():  # the request was cancelled (client gone, shutdown timeout)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
