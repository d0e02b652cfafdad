"""Serve the bot over HTTP: `chitchat serve` (FastAPI on uvicorn), the same engine as the chat.

Endpoints: `POST /generate`, `POST /v1/chat/completions` (OpenAI chat format; `routes_api`), sessions
(`POST /sessions`, `POST /sessions/{id}/messages`, `GET`/`DELETE /sessions/{id}`; `routes_sessions`),
`GET /healthz`, `GET /info`, `GET /v1/models`; the OpenAPI document at `/openapi.json` and Swagger UI
at `/docs` (`apidocs`); the chat page at `/` (`web/index.html`, a static page over the sessions API).
Inference runs in one model worker thread that batches the requests waiting at the same moment
(`chitchat.serve.worker`). Streaming answers send the reply's text as it is written when one
candidate is sampled, and the chosen reply once ranked otherwise. Loopback by default, answering
only to loopback Host names; `CHITCHAT_API_KEY` turns on a bearer token; every limit is a 4xx JSON
error; the security layer (Host check, cross-site refusal, headers) is `chitchat.serve.security`; who
a client is, for its fair shares of sessions and connections, `chitchat.serve.clients`. The command
line is `chitchat.commands.serve`.
"""

from __future__ import annotations

import asyncio
import gc
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from chitchat import __version__
from chitchat.engine.engine import Engine
from chitchat.model.gpt2 import PRESETS
from chitchat.serve import schemas as S
from chitchat.serve.apidocs import DOCS_PATHS, add_docs
from chitchat.serve.clients import ClientContext
from chitchat.serve.config import ServeConfig
from chitchat.serve.connections import quiet_cancelled_requests, quiet_file_exhaustion
from chitchat.serve.core import ServeState
from chitchat.serve.http import ApiError, BearerAuth, BodyLimit, error_response
from chitchat.serve.routes_api import add_api_routes
from chitchat.serve.routes_sessions import add_session_routes
from chitchat.serve.security import CrossSiteCheck, HostCheck, SecurityHeaders, page_csp, redact_session_ids
from chitchat.serve.worker import ModelWorker

# no token needed: the chat page and /docs ask for it themselves
OPEN_PATHS = frozenset({"/", "/healthz", "/openapi.json", *DOCS_PATHS})

__all__ = ["OPEN_PATHS", "ServeConfig", "create_app", "model_name"]


def model_name(path: str | None) -> str | None:
    """What /info and the page call a model: its directory and the one above ("default/dialogue"),
    never the absolute path."""
    return None if path is None else "/".join(Path(path).parts[-2:])


def create_app(engine: Engine, cfg: ServeConfig | None = None) -> FastAPI:
    cfg = (cfg or ServeConfig()).validate(engine)
    state = ServeState(engine, cfg)
    settings, sessions = cfg.settings, state.sessions
    sessions.per_client = cfg.client_sessions  # the store is ServeState's; its fair share is set here
    M = S.request_models(cfg.max_text_chars, cfg.max_history, cfg.max_tokens, cfg.max_n)
    page = _page()

    @asynccontextmanager
    async def lifespan(app):
        quiet_file_exhaustion(asyncio.get_running_loop())
        quiet_cancelled_requests()
        redact_session_ids()
        state.worker = app.state.worker = ModelWorker(engine, cfg.batch_window_ms, cfg.max_batch, cfg.max_queue)
        # What is alive now (the libraries, the models, the vocabulary) lives as long as the server:
        # out of the cyclic collector's sight, whose full collections would otherwise walk it all
        # while holding the GIL, stalling the event loop and the worker at once.
        gc.freeze()
        try:
            yield
        finally:  # uvicorn has finished the requests in flight; answer whatever is still queued
            await asyncio.to_thread(state.worker.stop)
            gc.unfreeze()

    errors = {code: {"model": S.ErrorResponse, "description": text} for code, text in (
        (400, "malformed request (bad JSON), or a Host name this server does not answer to"),
        (401, "missing or wrong bearer token (when CHITCHAT_API_KEY is set)"),
        (403, "a state-changing request from another site or origin"),
        (413, "request body too large"), (422, "invalid request: wrong type, or over a limit"),
        (503, "busy or shutting down"))}
    app = FastAPI(title="chitchat", version=__version__, lifespan=lifespan, responses=errors, redoc_url=None,
                  docs_url=None,
                  description="Multi-turn Chinese chitchat: a GPT-2 dialogue model, candidates ranked by an MMI model.")
    app.state.worker = None
    app.state.sessions = sessions
    app.state.serve = state
    docs_csp = add_docs(app)
    # the last added runs first: headers on every answer, then Host, token, origin, client, body size
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(ClientContext)
    app.add_middleware(CrossSiteCheck)
    if cfg.api_key:
        app.add_middleware(BearerAuth, token=cfg.api_key, open_paths=OPEN_PATHS)
        _declare_bearer(app)
    app.add_middleware(HostCheck, hosts=cfg.hosts())
    app.add_middleware(SecurityHeaders, pages={"/": page_csp(page), **dict.fromkeys(DOCS_PATHS, docs_csp)})

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

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page():
        return HTMLResponse(page)

    @app.get("/healthz", response_model=S.Health, summary="liveness")
    async def healthz():
        worker = state.worker
        if worker is None or worker.closed:
            raise ApiError(503, "the model worker is not running")
        return {"status": "ok"}

    @app.get("/info", summary="models, settings, limits and counters")
    async def info() -> dict:
        worker = state.worker
        out = {
            "version": __version__, "model": model_name(engine.model_path), "mmi_model": model_name(engine.mmi_path),
            "preset": _preset(engine.fast), "vocab_size": len(engine.tokenizer), "n_positions": engine.n_positions,
            "int8": engine.int8, "device": str(engine.device), "threads": engine.threads,
            "settings": {**settings.to_dict(), "ranking_used": str(engine.ranking_for(settings.ranking))},
            "limits": {k: getattr(cfg, k) for k in ("max_body_bytes", "max_text_chars", "max_history", "max_tokens",
                                                     "max_n", "max_sessions", "client_sessions", "session_idle_s",
                                                     "max_queue")},
            "batching": {"window_ms": cfg.batch_window_ms, "max_batch": cfg.max_batch},
            "auth": bool(cfg.api_key),
            "sessions": len(sessions),
            "worker": None if worker is None else {"answered": worker.answered, "engine_calls": worker.calls,
                                                   "largest_batch": worker.largest_batch, "waiting": worker.waiting,
                                                   "cancelled": worker.cancelled},
        }
        if cfg.api_key:  # only those who hold the key see where the models lie on the server's disk
            out["paths"] = {"model": engine.model_path, "mmi_model": engine.mmi_path}
        return out

    add_api_routes(app, state, M)
    add_session_routes(app, state, M)
    return app


def _validation_response(errors: list[dict]):
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


def _page() -> str:
    return files("chitchat.serve").joinpath("web", "index.html").read_text(encoding="utf-8")


def _preset(model) -> str:
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
