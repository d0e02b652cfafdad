"""What the routes of `chitchat serve` share: the engine, the configuration, the session store and
the model worker (started with the app), and the calls into the worker with their errors."""

from __future__ import annotations

from chitchat.corpus.normalize import normalize
from chitchat.engine.engine import Engine
from chitchat.engine.replies import Reply
from chitchat.engine.settings import ChatSettings
from chitchat.errors import ChitchatError
from chitchat.model.sampling import SamplingConfig
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

    async def respond(self, history: list[str], sampling: SamplingConfig, seed: int | None,
                      turn: ChatSettings | None = None) -> Reply:
        turn = turn or self.settings
        worker = self.running_worker()
        try:
            return await worker.reply(turn.visible(history), sampling, seed, turn.mmi, turn.ranking)
        except WorkerUnavailable as e:
            raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None
        except ChitchatError as e:
            raise ApiError(422, str(e)) from None

    def submit(self, history: list[str], sampling: SamplingConfig, seed: int | None,
               turn: ChatSettings | None = None):
        """A streaming request queued (see ModelWorker.submit); raises the 503s `respond` does."""
        turn = turn or self.settings
        worker = self.running_worker()
        try:
            return worker.submit(turn.visible(history), sampling, seed, turn.mmi, stream=True,
                                 ranking=turn.ranking)
        except WorkerUnavailable as e:
            raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None


def user_text(text: str, param: str) -> str:
    user = normalize(text)
    if not user:
        raise ApiError(422, "the text is empty once normalised (spaces and control characters only)", param)
    return user
