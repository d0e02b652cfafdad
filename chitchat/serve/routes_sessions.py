"""The session routes of `chitchat serve`: `POST /sessions`, `POST /sessions/{id}/messages`
(streamed or not), `GET` and `DELETE /sessions/{id}`.

Creating a session is limited per client (an IPv4 address or an IPv6 /64, chitchat.serve.clients):
its rate (`--session-rate`, `--session-burst`) and the sessions it holds (`--client-sessions`), each
a 429. A full store takes the least recently used session of the client holding the most, only when
that client holds more than its share, else refuses (503 with `Retry-After`): see
chitchat.serve.sessions."""

import json
import math
from types import SimpleNamespace

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from chitchat.engine.replies import Reply
from chitchat.engine.ranking import DEFAULT_RANKING
from chitchat.engine.settings import ReplySettings
from chitchat.errors import ChitchatError
from chitchat.serve import schemas as S
from chitchat.serve.core import ServeState, user_text
from chitchat.serve.http import ApiError, error_type

SESSION_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "description": 'JSON: {"type": "delta", "text"}, then {"type": "reply", ...the '
                                              'turn} or {"type": "error", "error"}'}}}


def add_session_routes(router: FastAPI, state: ServeState, M: SimpleNamespace) -> None:
    sessions, settings = state.sessions, state.settings
    missing = {404: {"model": S.ErrorResponse, "description": "no such session"}}

    @router.post("/sessions", status_code=201, response_model=S.SessionCreated, summary="start a session",
                 responses={429: {"model": S.ErrorResponse, "description": "this client creates sessions too fast"},
                            503: {"model": S.ErrorResponse, "description": "the store is full, or busy"}})
    async def create_session(request: Request):
        client = request.client.host if request.client else "unknown"
        wait = state.session_rate.take(client)
        if wait:
            raise ApiError(429, "too many new sessions from this client: try again later",
                           headers={"Retry-After": str(math.ceil(wait))})
        sid = sessions.create(client)
        if sid is None:
            raise ApiError(503, f"the server holds its most sessions ({sessions.max_sessions}): try again later",
                           headers={"Retry-After": str(math.ceil(sessions.retry_after()))})
        return {"id": sid}

    def held(session_id: str):
        s = sessions.get(session_id)
        if s is None:
            raise ApiError(404, "no such session (never created, deleted or expired)", "session_id")
        return s

    @router.post("/sessions/{session_id}/messages", response_model=S.SessionReply, responses={
        **missing, 200: {"content": {"text/event-stream": {"schema": SESSION_EVENT}},
                         "description": "the turn, or with stream: delta events, then a reply (or error) event"}},
        summary="the bot's turn in a session")
    async def session_message(session_id: str, req: M.SessionMessage, request: Request):
        user = user_text(req.text, "text")
        turn = state.turn(settings, **turn_changes(req.settings, req.seed))
        s = held(session_id)
        if req.stream:
            return StreamingResponse(session_events(session_id, s, user, turn),
                                     media_type="text/event-stream")
        async with s.lock:  # one turn at a time: each sees the one before
            if held(session_id) is not s:
                raise ApiError(404, "no such session", "session_id")
            reply = await state.respond(s.history + [user], turn, request)
            kept = sessions.record(session_id, user, reply.text, turn.max_history_len) is s
        return session_turn(session_id, s, reply, kept)

    async def session_events(session_id: str, s, user: str, turn: ReplySettings):
        """A streamed session turn: {"type": "delta", "text"} events as the reply is written (one
        candidate), then {"type": "reply", ...the turn} or {"type": "error", "error"}."""
        def event(kind: str, **body) -> str:
            return f"data: {json.dumps({'type': kind, **body}, ensure_ascii=False)}\n\n"

        async with s.lock:
            job = None
            try:
                if held(session_id) is not s:
                    raise ApiError(404, "no such session (deleted or expired)", "session_id")
                job = state.submit(s.history + [user], turn)
                while (delta := await job.deltas.get()) is not None:
                    yield event("delta", text=delta)
                reply = await job.future
                if reply.text[len(job.sent):] and reply.text.startswith(job.sent):
                    yield event("delta", text=reply.text[len(job.sent):])
                kept = sessions.record(session_id, user, reply.text, turn.max_history_len) is s
                yield event("reply", **session_turn(session_id, s, reply, kept))
            except Exception as e:  # after the 200 has gone: an error event, never a traceback
                status, param, text = ((e.status_code, e.param, e.detail) if isinstance(e, ApiError) else
                                       (422, None, str(e)) if isinstance(e, ChitchatError) else
                                       (500, None, "internal server error"))
                yield event("error", error={"message": text, "type": error_type(status), "param": param})
            finally:  # the client went away (the response was cancelled): free its place in the batch
                if job is not None and not job.future.done():
                    job.cancelled = True

    @router.get("/sessions/{session_id}", response_model=S.SessionState, responses=missing,
                summary="a session's history")
    async def get_session(session_id: str):
        s = held(session_id)
        return {"id": session_id, "history": s.history, "turns": s.turns}

    @router.delete("/sessions/{session_id}", response_model=S.SessionDeleted, responses=missing,
                   summary="end a session")
    async def delete_session(session_id: str):
        held(session_id)
        return {"id": session_id, "deleted": sessions.delete(session_id)}



def turn_changes(override, seed: int | None) -> dict:
    """What a session message changes of the server's settings: its `settings` (null fields: none;
    the deprecated `mmi` false is the ranking likelihood, true the default ranking) and its seed."""
    given = {} if override is None else override.model_dump()
    mmi = given.pop("mmi", None)
    if mmi is not None and given.get("ranking") is None:
        given["ranking"] = DEFAULT_RANKING if mmi else "likelihood"
    return {**given, "seed": seed}


def session_turn(session_id: str, s, reply: Reply, kept: bool) -> dict:
    return {"id": session_id, "reply": reply.text, "history": s.history, "turns": s.turns, "kept": kept,
            "candidates": [c.to_dict() for c in reply.candidates], "chosen": reply.chosen, "ranking": reply.ranking}
