"""What the routes of `chitchat serve` share: the engine, the configuration, the session store and
the model worker (started with the app), and the calls into the worker with their errors."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from chitchat.tokens.normalize import normalize
from chitchat.engine.engine import Engine
from chitchat.engine.replies import Reply
from chitchat.engine.settings import ReplySettings, SettingError
from chitchat.errors import ChitchatError
from chitchat.serve.config import ServeConfig
from chitchat.serve.http import ApiError
from chitchat.serve.security import RateLimit
from chitchat.serve.sessions import SessionStore
from chitchat.serve.worker import ModelWorker, WorkerUnavailable

MODEL_ID = "chitchat"


class ServeState:
    def __init__(self, engine: Engine, cfg: ServeConfig):
        self.engine, self.cfg, self.settings = engine, cfg, cfg.settings
        self.sessions = SessionStore(cfg.max_sessions, cfg.session_idle_s, cfg.settings.max_history_len)
        self.session_rate = RateLimit(cfg.session_rate, cfg.session_burst)
        self.worker: ModelWorker | None = None  # while the app runs

    def running_worker(self) -> ModelWorker:
        if self.worker is None:
            raise ApiError(503, "the model worker is not running")
        return self.worker

    def turn(self, base: ReplySettings, params: dict | None = None, **changes) -> ReplySettings:
        """`base` with a request's `changes` (None: unchanged), checked by `ReplySettings.validate` (the
        message the CLI and the chat give) and the values it asks for against this server's limits: a
        422 whose `param` is the first setting at fault, by its request name (`params`: setting ->
        request field; default "settings.NAME")."""
        def param(name: str) -> str:
            return (params or {}).get(name, f"settings.{name}")
        try:
            turn = base.updated(**changes)
        except SettingError as e:
            raise ApiError(422, str(e), param(e.names[0])) from None
        except ChitchatError as e:
            raise ApiError(422, str(e), "settings") from None
        cfg, asked = self.cfg, {k for k, v in changes.items() if v is not None}
        over = [(f"{name} {value} is over this server's {flag} {limit}", name) for name, value, flag, limit in (
            ("candidates", turn.candidates, "--max-n", cfg.max_n),
            ("max_len", turn.max_len, "--max-tokens", cfg.max_tokens),
            ("max_history_len", turn.max_history_len, "--max-history + 1", cfg.max_history + 1),
        ) if name in asked and value > limit]
        if over:
            raise ApiError(422, "; ".join(message for message, _ in over), param(over[0][1]))
        return turn

    async def respond(self, history: list[str], settings: ReplySettings, request: Request | None = None) -> Reply:
        """The reply to a request that is not streamed. With `request`, a client that goes away
        before the reply is ready cancels it: the worker drops it from its queue, or from the batch
        at the next decoding step, as it does for a stream."""
        worker = self.running_worker()
        try:
            job = worker.submit(history, settings)
        except WorkerUnavailable as e:
            raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None
        gone = asyncio.ensure_future(_disconnected(request)) if request is not None else None
        try:
            if gone is not None:
                await asyncio.wait({job.future, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not job.future.done():
                    raise ApiError(499, "the client closed the request")  # nobody reads this answer
            return await job.future
        except ChitchatError as e:
            raise ApiError(422, str(e)) from None
        finally:
            if gone is not None:
                gone.cancel()
            if not job.future.done():  # cancelled (the client left, or the server stops)
                job.cancelled = True

    def submit(self, history: list[str], settings: ReplySettings):
        """A streaming request queued (see ModelWorker.submit); raises the 503s `respond` does."""
        worker = self.running_worker()
        try:
            return worker.submit(history, settings, stream=True)
        except WorkerUnavailable as e:
            raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone: once the request's body is read, the next ASGI message is
    http.disconnect (uvicorn sends it when the connection is lost)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def user_text(text: str, param: str) -> str:
    user = normalize(text)
    if not user:
        raise ApiError(422, "the text is empty once normalised (spaces and control characters only)", param)
    return user
