"""The stateless routes of `chitchat serve`: `POST /generate`, and OpenAI's chat format
(`POST /v1/chat/completions`, `GET /v1/models`), streamed or not."""

import json
import time
import uuid
from types import SimpleNamespace

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from chitchat.engine.ranking import ranked
from chitchat.engine.settings import ReplySettings
from chitchat.errors import ChitchatError
from chitchat.serve import schemas as S
from chitchat.serve.core import MODEL_ID, ServeState, user_text
from chitchat.serve.http import ApiError, error_type

SSE_EVENT = {"type": "object", "required": ["data"], "properties": {  # one server-sent event
    "data": {"type": "string", "description": "a chat.completion.chunk as JSON; [DONE] last"}}}


def add_api_routes(router: FastAPI, state: ServeState, M: SimpleNamespace) -> None:
    engine, cfg, settings = state.engine, state.cfg, state.settings

    @router.post("/generate", response_model=S.GenerateResponse, response_model_exclude_unset=True,
                 summary="one reply to a text and its history")
    async def generate(req: M.GenerateRequest, request: Request):
        turn = state.turn(settings, {"seed": "seed"}, seed=req.seed)
        reply = await state.respond(req.history + [user_text(req.text, "text")], turn, request)
        out: dict = {"generated_text": reply.text}
        if req.candidates:
            out.update(candidates=[c.to_dict() for c in reply.candidates], chosen=reply.chosen, ranking=reply.ranking)
        return out

    @router.get("/v1/models", summary="the model, as OpenAI clients list it")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "chitchat"}]}

    @router.post("/v1/chat/completions", response_model=S.ChatCompletion, summary="OpenAI-compatible chat completion",
                 responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                                  "description": "a chat.completion, or chat.completion.chunk events if stream"}})
    async def chat_completions(req: M.ChatRequest, request: Request):
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
        turn = state.turn(settings, OPENAI_PARAMS, **chat_changes(settings, req))
        prompt_tokens = len(engine.context_ids(engine.prompt(history, turn)))
        usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
        if req.stream and engine.streams(turn):  # the reply is known as it is written: send it so
            job = state.submit(history, turn)
            return StreamingResponse(_live_sse(job, prompt_tokens, usage), media_type="text/event-stream")
        reply = await state.respond(history, turn, request)
        order = ranked(reply.candidates, reply.chosen, reply.ranking)[:req.n]
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



OPENAI_PARAMS = {"temperature": "temperature", "top_p": "top_p", "max_len": "max_tokens", "min_len": "max_tokens",
                 "candidates": "n", "seed": "seed"}  # reply setting -> the OpenAI request field that sets it


def chat_changes(base: ReplySettings, req) -> dict:
    """The reply settings an OpenAI request changes: temperature (0: greedy, as OpenAI clients mean
    it), top_p (0: the single most likely token, greedy too), max_tokens (max_len), n (at least that
    many candidates), seed."""
    max_len = req.max_completion_tokens or req.max_tokens
    greedy = req.top_p == 0
    return {"temperature": 0.0 if greedy else req.temperature, "top_p": None if greedy else req.top_p, "max_len": max_len,
            "min_len": min(base.min_len, max_len) if max_len else None,
            "candidates": max(req.n, base.candidates), "seed": req.seed}  # n sampled at least: an index may give none


async def _live_sse(job, prompt_tokens: int, include_usage: bool):
    """One reply as OpenAI's chat.completion.chunk events, its text sent as each decoding step writes
    it; an error after the start is an {"error": ...} event. The client going away cancels this
    generator, which marks the job cancelled: the worker drops it from the batch at the next step."""
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
