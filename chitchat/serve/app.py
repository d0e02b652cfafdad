"""Serve the bot over HTTP: `chitchat serve` (FastAPI on uvicorn), the same engine as the chat.

Endpoints: `POST /generate`, `POST /v1/chat/completions` (OpenAI chat format), sessions
(`POST /sessions`, `POST /sessions/{id}/messages`, `GET`/`DELETE /sessions/{id}`), `GET /healthz`,
`GET /info`, `GET /v1/models`; the OpenAPI document at `/openapi.json`; the chat page at `/`
(`chitchat/web/index.html`, a static page over the sessions API). Inference runs in one model
worker thread that batches the requests waiting at the same moment (`chitchat.serve.worker`).
Streaming answers send the reply's text as it is written when one candidate is sampled, and the
chosen reply once ranked otherwise. Loopback by default; `CHITCHAT_API_KEY` turns on a bearer
token; every limit is a 4xx JSON error.
"""

import asyncio
import json
import math
import os
import sys
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields, replace

from chitchat.errors import ChitchatError
from chitchat.engine.engine import Engine, Reply
from chitchat.model.sampling import SamplingConfig
from chitchat.corpus.normalize import normalize
from chitchat.engine.settings import ChatSettings

OPEN_PATHS = frozenset({"/", "/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})  # no token needed
MODEL_ID = "chitchat"
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {  # one server-sent event
    "data": {"type": "string", "description": "a chat.completion.chunk as JSON; [DONE] last"}}}
SESSION_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "description": 'JSON: {"type": "delta", "text"}, then {"type": "reply", ...the '
                                              'turn} or {"type": "error", "error"}'}}}


@dataclass
class ServeConfig:
    settings: ChatSettings = field(default_factory=ChatSettings)  # sampling, mmi, max_history_len (as the chat)
    api_key: str | None = None  # `chitchat serve` takes it from $CHITCHAT_API_KEY
    max_body_bytes: int = 64 * 1024
    max_text_chars: int = 2000  # per utterance
    max_history: int = 50  # utterances a request may carry before the new one
    max_tokens: int = 64  # reply tokens a request may ask for
    max_n: int = 8  # replies one chat completion may ask for
    max_sessions: int = 1000
    session_idle_s: float = 3600.0
    batch_window_ms: float = 30.0
    max_batch: int = 32
    max_queue: int = 256

    def validate(self, engine: Engine) -> "ServeConfig":
        self.settings.validate()
        small = [f.name for f in fields(self) if f.name not in ("settings", "api_key", "batch_window_ms")
                 and getattr(self, f.name) < 1]
        if small or self.batch_window_ms < 0:
            raise ChitchatError(f"serve limits must be >= 1 (the batch window >= 0): "
                                f"{', '.join(small) or 'batch_window_ms'}")
        if self.settings.sampling.max_len > self.max_tokens:
            raise ChitchatError(f"--max-len {self.settings.sampling.max_len} is over --max-tokens {self.max_tokens}")
        engine.context_budget(self.max_tokens)  # raises when the longest reply leaves no room for a history
        return self


def create_app(engine: Engine, cfg: ServeConfig | None = None):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.routing import Match

    from chitchat import __version__
    from chitchat.serve import schemas as S
    from chitchat.serve.http import ApiError, BearerAuth, BodyLimit, error_response, error_type
    from chitchat.serve.sessions import SessionStore
    from chitchat.serve.worker import ModelWorker, WorkerUnavailable

    cfg = (cfg or ServeConfig()).validate(engine)
    settings = cfg.settings
    M = S.request_models(cfg.max_text_chars, cfg.max_history, cfg.max_tokens, cfg.max_n)
    sessions = SessionStore(cfg.max_sessions, cfg.session_idle_s, settings.max_history_len)

    @asynccontextmanager
    async def lifespan(app):
        app.state.worker = ModelWorker(engine, cfg.batch_window_ms, cfg.max_batch, cfg.max_queue)
        try:
            yield
        finally:  # uvicorn has finished the requests in flight; answer whatever is still queued
            await asyncio.to_thread(app.state.worker.stop)

    errors = {code: {"model": S.ErrorResponse, "description": text} for code, text in (
        (400, "malformed request (bad JSON)"), (401, "missing or wrong bearer token (when CHITCHAT_API_KEY is set)"),
        (413, "request body too large"), (422, "invalid request: wrong type, or over a limit"),
        (503, "busy or shutting down"))}
    app = FastAPI(title="chitchat", version=__version__, lifespan=lifespan, responses=errors,
                  description="Multi-turn Chinese chitchat: a GPT-2 dialogue model, candidates ranked by an MMI model.")
    app.state.worker = None
    app.state.sessions = sessions
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    if cfg.api_key:
        app.add_middleware(BearerAuth, token=cfg.api_key, open_paths=OPEN_PATHS)
        _declare_bearer(app)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        headers = exc.headers
        if exc.status_code == 405:  # every method of the path (Starlette names only those of one route)
            allowed = {m for r in app.routes if r.matches(request.scope)[0] is Match.PARTIAL for m in r.methods or ()}
            headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "param", None), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _validation_response(exc.errors())

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        return error_response(500, "internal server error")

    def user_text(text: str, param: str) -> str:
        user = normalize(text)
        if not user:
            raise ApiError(422, "the text is empty once normalised (spaces and control characters only)", param)
        return user

    async def respond(history: list[str], sampling: SamplingConfig, seed: int | None,
                      turn: ChatSettings = settings) -> Reply:
        worker = app.state.worker
        if worker is None:
            raise ApiError(503, "the model worker is not running")
        try:
            return await worker.reply(turn.visible(history), sampling, seed, turn.mmi)
        except WorkerUnavailable as e:
            raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None
        except ChitchatError as e:
            raise ApiError(422, str(e)) from None

    def submit(history: list[str], sampling: SamplingConfig, seed: int | None, turn: ChatSettings = settings):
        """A streaming request queued (see ModelWorker.submit); raises the 503s `respond` does."""
        worker = app.state.worker
        if worker is None:
            raise ApiError(503, "the model worker is not running")
        try:
            return worker.submit(turn.visible(history), sampling, seed, turn.mmi, stream=True)
        except WorkerUnavailable as e:
            raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(_page())

    @app.get("/healthz", response_model=S.Health, summary="liveness")
    async def healthz():
        worker = app.state.worker
        if worker is None or worker.closed:
            raise ApiError(503, "the model worker is not running")
        return {"status": "ok"}

    @app.get("/info", summary="models, settings, limits and counters")
    async def info() -> dict:
        worker = app.state.worker
        return {
            "version": __version__, "model": engine.model_path, "mmi_model": engine.mmi_path,
            "preset": _preset(engine.fast), "vocab_size": len(engine.tokenizer), "n_positions": engine.n_positions,
            "int8": engine.int8, "device": str(engine.device), "threads": engine.threads,
            "settings": {**asdict(settings.sampling), "mmi": settings.mmi and engine.mmi is not None,
                         "max_history_len": settings.max_history_len},
            "limits": {k: getattr(cfg, k) for k in ("max_body_bytes", "max_text_chars", "max_history", "max_tokens",
                                                     "max_n", "max_sessions", "session_idle_s", "max_queue")},
            "batching": {"window_ms": cfg.batch_window_ms, "max_batch": cfg.max_batch},
            "auth": bool(cfg.api_key),
            "sessions": len(sessions),
            "worker": None if worker is None else {"answered": worker.answered, "engine_calls": worker.calls,
                                                   "largest_batch": worker.largest_batch, "waiting": worker.waiting,
                                                   "cancelled": worker.cancelled},
        }

    @app.post("/generate", response_model=S.GenerateResponse, response_model_exclude_unset=True,
              summary="one reply to a text and its history")
    async def generate(req: M.GenerateRequest):
        reply = await respond(req.history + [user_text(req.text, "text")], settings.sampling, req.seed)
        out: dict = {"generated_text": reply.text}
        if req.candidates:
            out.update(candidates=[c.to_dict() for c in reply.candidates], chosen=reply.chosen, ranking=reply.ranking)
        return out

    @app.post("/sessions", status_code=201, response_model=S.SessionCreated, summary="start a session")
    async def create_session():
        return {"id": sessions.create()}

    missing = {404: {"model": S.ErrorResponse, "description": "no such session"}}

    def held(session_id: str):
        s = sessions.get(session_id)
        if s is None:
            raise ApiError(404, "no such session (never created, deleted, evicted or expired)", "session_id")
        return s

    @app.post("/sessions/{session_id}/messages", response_model=S.SessionReply, responses={
        **missing, 200: {"content": {"text/event-stream": {"schema": SESSION_EVENT}},
                         "description": "the turn, or with stream: delta events, then a reply (or error) event"}},
        summary="the bot's turn in a session")
    async def session_message(session_id: str, req: M.SessionMessage):
        user = user_text(req.text, "text")
        turn = _turn_settings(settings, req.settings)
        s = held(session_id)
        if req.stream:
            return StreamingResponse(session_events(session_id, s, user, turn, req.seed),
                                     media_type="text/event-stream")
        async with s.lock:  # one turn at a time: each sees the one before
            if held(session_id) is not s:
                raise ApiError(404, "no such session", "session_id")
            reply = await respond(s.history + [user], turn.sampling, req.seed, turn)
            kept = sessions.record(session_id, user, reply.text, turn.max_history_len) is s
        return _session_turn(session_id, s, reply, kept)

    async def session_events(session_id: str, s, user: str, turn: ChatSettings, seed: int | None):
        """A streamed session turn: {"type": "delta", "text"} events as the reply is written (one
        candidate), then {"type": "reply", ...the turn} or {"type": "error", "error"}."""
        def event(kind: str, **body) -> str:
            return f"data: {json.dumps({'type': kind, **body}, ensure_ascii=False)}\n\n"

        async with s.lock:
            job = None
            try:
                if held(session_id) is not s:
                    raise ApiError(404, "no such session (deleted, evicted or expired)", "session_id")
                job = submit(s.history + [user], turn.sampling, seed, turn)
                while (delta := await job.deltas.get()) is not None:
                    yield event("delta", text=delta)
                reply = await job.future
                if reply.text[len(job.sent):] and reply.text.startswith(job.sent):
                    yield event("delta", text=reply.text[len(job.sent):])
                kept = sessions.record(session_id, user, reply.text, turn.max_history_len) is s
                yield event("reply", **_session_turn(session_id, s, reply, kept))
            except Exception as e:  # after the 200 has gone: an error event, never a traceback
                status, param, text = ((e.status_code, e.param, e.detail) if isinstance(e, ApiError) else
                                       (422, None, str(e)) if isinstance(e, ChitchatError) else
                                       (500, None, "internal server error"))
                yield event("error", error={"message": text, "type": error_type(status), "param": param})
            finally:  # the client went away (the response was cancelled): free its place in the batch
                if job is not None and not job.future.done():
                    job.cancelled = True

    @app.get("/sessions/{session_id}", response_model=S.SessionState, responses=missing,
             summary="a session's history")
    async def get_session(session_id: str):
        s = held(session_id)
        return {"id": session_id, "history": s.history, "turns": s.turns}

    @app.delete("/sessions/{session_id}", response_model=S.SessionDeleted, responses=missing, summary="end a session")
    async def delete_session(session_id: str):
        held(session_id)
        return {"id": session_id, "deleted": sessions.delete(session_id)}

    @app.get("/v1/models", summary="the model, as OpenAI clients list it")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "chitchat"}]}

    @app.post("/v1/chat/completions", response_model=S.ChatCompletion, summary="OpenAI-compatible chat completion",
              responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                               "description": "a chat.completion, or chat.completion.chunk events if stream"}})
    async def chat_completions(req: M.ChatRequest):
        history, last = [], None
        for i, m in enumerate(req.messages):
            parts = m.content if isinstance(m.content, list) else [m.content or ""]
            content = "".join(p if isinstance(p, str) else p.text for p in parts)
            if len(content) > cfg.max_text_chars:
                raise ApiError(422, f"message over {cfg.max_text_chars} characters", f"messages.{i}.content")
            if m.role in ("user", "assistant"):  # system and developer messages mean nothing to this model
                history.append(content)
                last = (m.role, i)
        if last is None or last[0] != "user":
            raise ApiError(422, "the last user or assistant message must be the user's", "messages")
        history[-1] = user_text(history[-1], f"messages.{last[1]}.content")
        sampling = _chat_sampling(settings.sampling, req)
        visible = engine.fit_history([engine.encode(u) for u in settings.visible(history)], sampling.max_len)
        prompt_tokens = len(engine.context_ids(visible))
        usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
        if req.stream and sampling.candidates == 1:  # the reply is known as it is written: send it so
            job = submit(history, sampling, req.seed)
            return StreamingResponse(_live_sse(job, prompt_tokens, usage), media_type="text/event-stream")
        reply = await respond(history, sampling, req.seed)
        order = _ranked(reply)[:req.n]
        completion_tokens = sum(len(reply.candidates[i].ids) for i in order)
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": MODEL_ID,
            "choices": [{"index": k, "message": {"role": "assistant", "content": reply.candidates[i].text},
                         "finish_reason": "stop" if reply.candidates[i].finished else "length"}
                        for k, i in enumerate(order)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        if not req.stream:
            return body
        return StreamingResponse(_sse(body, usage), media_type="text/event-stream")

    return app


def _validation_response(errors: list[dict]):
    from chitchat.serve.http import error_response

    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return error_response(400, f"malformed JSON: {first.get('ctx', {}).get('error', 'cannot parse')}")
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return error_response(422, "a JSON body is required (Content-Type: application/json)")
    if isinstance(first.get("input"), (bytes, bytearray)):
        return error_response(422, "the body must be a JSON object sent with Content-Type: application/json")

    def where(e: dict) -> str:
        """"messages.0.content": the field names and indices after "body", up to a union member's tag."""
        loc = list(e.get("loc", ()))
        names = []
        for x in loc[1:] if loc[:1] == ["body"] else loc:
            if isinstance(x, str) and not x.isidentifier():
                break
            names.append(str(x))
        return ".".join(names)

    message = "; ".join(f"{where(e) or 'body'}: {e.get('msg', 'invalid')}" for e in errors[:3])
    return error_response(422, message or "invalid request", where(first) or None)


def _turn_settings(base: ChatSettings, override) -> ChatSettings:
    """The server's settings with what a session message's `settings` changes."""
    if override is None:
        return base
    given = {k: v for k, v in override.model_dump().items() if v is not None}
    sampling = replace(base.sampling, **{k: given[k] for k in ("temperature", "top_k", "top_p", "candidates")
                                          if k in given})
    turn = replace(base, sampling=sampling, mmi=given.get("mmi", base.mmi),
                   max_history_len=given.get("max_history_len", base.max_history_len))
    try:
        return turn.validate()
    except ChitchatError as e:
        from chitchat.serve.http import ApiError

        raise ApiError(422, str(e), "settings") from None


def _session_turn(session_id: str, s, reply: Reply, kept: bool) -> dict:
    return {"id": session_id, "reply": reply.text, "history": s.history, "turns": s.turns, "kept": kept,
            "candidates": [c.to_dict() for c in reply.candidates], "chosen": reply.chosen, "ranking": reply.ranking}


def _page() -> str:
    from importlib.resources import files

    return files("chitchat.serve").joinpath("web", "index.html").read_text(encoding="utf-8")


def _chat_sampling(base: SamplingConfig, req) -> SamplingConfig:
    """The server's sampling settings with what an OpenAI request may change."""
    changes: dict = {"candidates": max(req.n, base.candidates)}
    max_len = req.max_completion_tokens or req.max_tokens
    if max_len:
        changes.update(max_len=max_len, min_len=min(base.min_len, max_len))
    if req.temperature == 0:  # greedy, as OpenAI clients mean it
        changes["top_k"] = 1
    elif req.temperature is not None:
        changes["temperature"] = req.temperature
    if req.top_p is not None:
        changes["top_p"] = req.top_p
    return replace(base, **changes).validate()


def _ranked(reply: Reply) -> list[int]:
    """Candidate indices: the chosen one, then the others by the ranking used; empty ones last."""
    def key(i: int):
        c = reply.candidates[i]
        score = c.mmi if reply.ranking == "mmi" else c.nll
        finite = score is not None and math.isfinite(score)
        return (i != reply.chosen, c.empty, not finite, score if finite else 0.0)
    return sorted(range(len(reply.candidates)), key=key)


async def _live_sse(job, prompt_tokens: int, include_usage: bool):
    """One reply as OpenAI's chat.completion.chunk events, its text sent as each decoding step writes
    it; an error after the start is an {"error": ...} event. The client going away cancels this
    generator, which marks the job cancelled: the worker drops it from the batch at the next step."""
    from chitchat.serve.http import error_type

    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": MODEL_ID}

    def event(choices: list, **extra) -> str:
        return f"data: {json.dumps({**head, 'choices': choices, **extra}, ensure_ascii=False)}\n\n"

    try:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        while (delta := await job.deltas.get()) is not None:
            yield event([{"index": 0, "delta": {"content": delta}, "finish_reason": None}])
        try:
            reply = await job.future
        except Exception as e:  # after the 200 has gone: an error event, never a traceback
            status, text = (422, str(e)) if isinstance(e, ChitchatError) else (500, "internal server error")
            error = {"message": text, "type": error_type(status), "param": None}
            yield f"data: {json.dumps({'error': error}, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
            return
        rest = reply.text[len(job.sent):] if reply.text.startswith(job.sent) else ""
        if rest:
            yield event([{"index": 0, "delta": {"content": rest}, "finish_reason": None}])
        cand = reply.candidates[reply.chosen]
        yield event([{"index": 0, "delta": {}, "finish_reason": "stop" if cand.finished else "length"}])
        if include_usage:
            n = len(cand.ids)
            yield event([], usage={"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                   "total_tokens": prompt_tokens + n})
        yield "data: [DONE]\n\n"
    finally:
        if not job.future.done():
            job.cancelled = True


def _sse(body: dict, include_usage: bool):
    """The completion as OpenAI's chat.completion.chunk events (computed whole first: several
    candidates are ranked before the reply is known)."""
    head = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"]}

    def event(choices: list, **extra) -> str:
        return f"data: {json.dumps({**head, 'choices': choices, **extra}, ensure_ascii=False)}\n\n"

    for c in body["choices"]:
        i = c["index"]
        yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        yield event([{"index": i, "delta": {"content": c["message"]["content"]}, "finish_reason": None}])
        yield event([{"index": i, "delta": {}, "finish_reason": c["finish_reason"]}])
    if include_usage:
        yield event([], usage=body["usage"])
    yield "data: [DONE]\n\n"


def _preset(model) -> str:
    from chitchat.model.gpt2 import PRESETS

    for name, p in PRESETS.items():
        if (p["n_layer"], p["n_embd"], p["n_head"], p["n_positions"]) == (model.n_layer, model.d, model.n_head,
                                                                        model.n_positions):
            return name
    return "custom"


def _declare_bearer(app) -> None:
    """State the bearer token in the OpenAPI document."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema["paths"].items():
                for op in operations.values():
                    op["security"] = [] if path in OPEN_PATHS else [{"bearer": []}]
        return app.openapi_schema

    app.openapi = openapi


# -- command line ---------------------------------------------------------------------------------

def add_arguments(p) -> None:
    from chitchat.engine.options import add_sampling_arguments

    d = ServeConfig()
    p.add_argument("--model", metavar="DIR",
                   help="dialogue model or training run directory; none: the shipped default model (models/default)")
    p.add_argument("--mmi-model", metavar="DIR", help="MMI model for reranking; with no --model, the default MMI model")
    p.add_argument("--no-mmi", action="store_true", help="do not load an MMI model: rank by likelihood")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-history-len", type=int, default=d.settings.max_history_len, metavar="N",
                   help="utterances of dialogue the model sees, the new one included (as in the chat)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--int8", action="store_true", help="int8 weights for the linear and output layers (CPU)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads the engine uses (default: torch's, one per core; 1 on a CPU busy with other work)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (warning: no access log)")
    p.add_argument("--shutdown-timeout", type=float, default=30, metavar="S",
                   help="on SIGINT/SIGTERM, seconds to finish the requests in flight")
    g = p.add_argument_group("limits (each a 4xx JSON error)")
    g.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, metavar="N", help="request body size")
    g.add_argument("--max-text-chars", type=int, default=d.max_text_chars, metavar="N", help="characters per utterance")
    g.add_argument("--max-history", type=int, default=d.max_history, metavar="N",
                   help="utterances a request may carry (history, messages)")
    g.add_argument("--max-tokens", type=int, default=d.max_tokens, metavar="N", help="max_tokens a request may ask")
    g.add_argument("--max-n", type=int, default=d.max_n, metavar="N", help="n (replies) a chat completion may ask")
    g.add_argument("--max-sessions", type=int, default=d.max_sessions, metavar="N",
                   help="sessions held (the least recently used is evicted)")
    g.add_argument("--session-idle", type=float, default=d.session_idle_s, metavar="S",
                   help="seconds after which an unused session expires")
    g.add_argument("--max-queue", type=int, default=d.max_queue, metavar="N",
                   help="requests waiting for the model (beyond: 503)")
    b = p.add_argument_group("batching")
    b.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms, metavar="MS",
                   help="how long the model worker waits for more requests to batch with the first")
    b.add_argument("--max-batch", type=int, default=d.max_batch, metavar="N", help="requests per batch")
    add_sampling_arguments(p)


def config_from_args(args) -> ServeConfig:
    from chitchat.engine.options import sampling_from_args

    settings = ChatSettings(sampling_from_args(args), mmi=not args.no_mmi, max_history_len=args.max_history_len)
    return ServeConfig(
        settings=settings.validate(), api_key=os.environ.get("CHITCHAT_API_KEY") or None,
        max_body_bytes=args.max_body_bytes, max_text_chars=args.max_text_chars, max_history=args.max_history,
        max_tokens=args.max_tokens, max_n=args.max_n, max_sessions=args.max_sessions,
        session_idle_s=args.session_idle, max_queue=args.max_queue, batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
    )


def run(args) -> int:
    import uvicorn

    from chitchat.engine.options import load_engine

    if not 0 <= args.port <= 65535:
        raise ChitchatError(f"--port {args.port} is not a port")
    if args.threads is not None and args.threads < 1:
        raise ChitchatError("--threads must be >= 1")
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()  # torch's default, one per core: /info shows the number
    cfg = config_from_args(args)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    engine = load_engine(args, say)
    app = create_app(engine, cfg)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        say(f"warning: listening on {args.host} with no CHITCHAT_API_KEY: anyone who can reach it may use it")
    say(f"chitchat serve: model {engine.model_path}" + (f", MMI {engine.mmi_path}" if engine.mmi else ", no MMI")
        + f", http://{args.host}:{args.port} (OpenAPI at /openapi.json)" + (", bearer token on" if cfg.api_key else ""))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.shutdown_timeout)
    return 0
