"""The model worker of `chitchat serve`: one thread owns the engine and answers in dynamic batches.

Requests queue up from the event loop; the worker takes the first one waiting and every one queued
behind it, then waits at most `window_ms` for more until it has as many as were in the server at
once while it answered the previous batch (the clients it just answered send their next requests in
the next few milliseconds, and they join the ones that queued meanwhile; a lone client never
waits). It answers them, at most `max_batch`, with one `Engine.replies` call per group of identical
sampling settings, so that the requests that arrive together share every decoding step.
A request with a `seed` is answered on its own, so that its seed alone decides its reply. When a
batched call fails, each of its requests is answered alone, so that one request cannot fail others
(except a streaming one that has already sent text: it gets the error).

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
from dataclasses import astuple, dataclass

from chitchat.engine.engine import Engine
from chitchat.engine.replies import Reply, WrittenText

from chitchat.model.sampling import SamplingConfig


class WorkerUnavailable(Exception):
    """The queue is full, or the worker is stopping."""


@dataclass(eq=False)
class Job:
    history: list[str]
    sampling: SamplingConfig
    seed: int | None
    mmi: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    deltas: asyncio.Queue | None = None  # streaming: text as it is written, then None
    cancelled: bool = False  # set from the event loop when the client has gone
    written: WrittenText | None = None  # the text put on `deltas` so far

    @property
    def sent(self) -> str:
        return self.written.text if self.written is not None else ""

    def group_key(self):
        return ("alone", id(self)) if self.seed is not None else (astuple(self.sampling), self.mmi)

    def post(self, callback, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # its event loop has ended: nobody is waiting
            pass


class ModelWorker:
    def __init__(self, engine: Engine, window_ms: float = 30.0, max_batch: int = 32, max_queue: int = 256):
        self.engine = engine
        self.window = window_ms / 1000
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.waiting = 0  # queued or being answered
        self.closed = False
        self.calls = 0  # Engine.replies_stream calls
        self.answered = 0
        self.largest_batch = 0
        self.cancelled = 0  # requests given up because their client went away
        self.recent = 1  # most requests in the server at once since the current batch began
        self.thread = threading.Thread(target=self._run, name="chitchat-model", daemon=True)
        self.thread.start()

    async def reply(self, history: list[str], sampling: SamplingConfig, seed: int | None = None,
                    mmi: bool = True) -> Reply:
        job = self.submit(history, sampling, seed, mmi)
        try:
            return await job.future
        except asyncio.CancelledError:  # the client went away: free its rows in the batch
            job.cancelled = True
            raise

    def submit(self, history: list[str], sampling: SamplingConfig, seed: int | None = None, mmi: bool = True,
               stream: bool = False) -> Job:
        """Queue a request (from the event loop); await `job.future` for its Reply. With `stream`
        and one candidate, `job.deltas` gets the text as it is written, then None."""
        loop = asyncio.get_running_loop()
        job = Job(history, sampling, seed, mmi, loop, loop.create_future(),
                  deltas=asyncio.Queue() if stream else None)
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
            self.cancelled += len(gone)
            self._finish(gone, [None] * len(gone))
            group = [j for j in group if not j.cancelled]
            if not group:
                return
        try:
            self.calls += 1
            results: list = self._run_engine(group)
        except Exception as e:  # reported to the waiting request, never ends the worker
            if len(group) > 1:
                for j in group:
                    if j.sent:  # its client has seen text of this attempt: it cannot start again
                        self._finish([j], [e])
                    else:
                        j.written = None
                        self._answer([j])
                return
            results = [e]
        self._finish(group, results)

    def _run_engine(self, group: list[Job]) -> list:
        """One `Engine.replies_stream` over the group: text to the streaming requests with one
        candidate as each step writes it; cancelled requests given up at the next step."""
        first, engine = group[0], self.engine
        steps = engine.replies_stream([j.history for j in group], first.sampling, seed=first.seed, mmi=first.mmi)
        live = first.sampling.candidates == 1
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
                    self.cancelled += len(give_up)
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
