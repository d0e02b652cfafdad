"""Request and response bodies of `chitchat serve` (pydantic), with the configured limits in them.

Requests are validated strictly (a string where a number belongs is a 422, never a coercion) and
fields the server does not know are ignored, as OpenAI clients send many. The limits live in the
schema, so the OpenAPI document states them.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

SEED_MIN, SEED_MAX = -(2**53), 2**53  # integers JSON carries exactly everywhere (torch takes more)


def _integral(value):
    """5.0 is an integer in JSON (and JSON Schema); "5" and true are not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(low: int, high: int, **kw):
    """An integer in [low, high]; the bounds inside the type, so that the JSON schema states them when
    the field may also be null."""
    return Annotated[int, Field(ge=low, le=high, **kw), BeforeValidator(_integral)]


def number(**bounds):
    return Annotated[float, Field(allow_inf_nan=False, **bounds)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class CandidateOut(BaseModel):
    text: str
    nll: float | str = Field(description="dialogue model's mean negative log-likelihood per token (lower is better)")
    mmi: float | str | None = Field(description="MMI model's mean NLL of the history given the reply; null without MMI")
    finished: bool = Field(description="false when the reply was cut at max_len")
    nll_empty: float | str | None = Field(None, description="dialogue model's mean NLL of the reply given no context "
                                                            "(PMI rankings); null when not scored")


class GenerateResponse(BaseModel):
    generated_text: str
    candidates: list[CandidateOut] | None = None
    chosen: int | None = Field(None, description="index of the reply among the candidates")
    ranking: str | None = Field(None, description="the ranking used: mmi, pmi, a mix such as mmi+0.5*pmi, or likelihood")


class SessionCreated(BaseModel):
    id: str


class SessionState(BaseModel):
    id: str
    history: list[str] = Field(description="the utterances the model sees next turn, oldest first")
    turns: int


class SessionReply(SessionState):
    reply: str
    kept: bool = Field(description="false when the session was deleted or evicted while the reply was computed")
    candidates: list[CandidateOut] = Field(description="every candidate sampled this turn, with its scores")
    chosen: int = Field(description="index of the reply among the candidates")
    ranking: str = Field(description="the ranking used: mmi, pmi, a mix such as mmi+0.5*pmi, or likelihood")


class SessionDeleted(BaseModel):
    id: str
    deleted: bool


class Health(BaseModel):
    status: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


def request_models(text_limit: int, history_limit: int, tokens_limit: int, n_limit: int) -> SimpleNamespace:
    """The request bodies, with these limits."""

    def text_field(**kw):
        return Field(max_length=text_limit, **kw)

    Seed = integer(SEED_MIN, SEED_MAX)
    seed_doc = "the same seed and input give the same reply"

    class GenerateRequest(Strict):
        text: str = text_field(min_length=1, description="the user's new utterance")
        history: list[Annotated[str, StringConstraints(max_length=text_limit)]] = Field(
            default_factory=list, max_length=history_limit,
            description="the dialogue so far, oldest first, alternating user and bot")
        candidates: bool = Field(False, description="also return every sampled candidate and its scores")
        seed: Seed | None = Field(None, description=seed_doc)

    class TurnSettings(Strict):
        """This turn's settings; a missing or null one is the server's."""
        temperature: number(gt=0, le=100) | None = None
        top_k: integer(0, 100_000) | None = Field(None, description="0: no limit")
        top_p: number(ge=0, le=1) | None = Field(None, description="0: off")
        candidates: integer(1, n_limit) | None = Field(None, description="replies sampled, then ranked")
        mmi: bool | None = Field(None, description="rank by the MMI model (when the server has one)")
        ranking: Annotated[str, StringConstraints(max_length=100)] | None = Field(
            None, description="how candidates are ranked: mmi, pmi, likelihood or a mix such as mmi+0.5*pmi")
        max_history_len: integer(1, history_limit + 1) | None = Field(
            None, description="utterances the model sees, the new one included; the session keeps as many")

    class SessionMessage(Strict):
        text: str = text_field(min_length=1)
        seed: Seed | None = Field(None, description=seed_doc)
        settings: TurnSettings | None = None
        stream: bool = Field(False, description="server-sent events: the reply's text as it is written "
                                                "(one candidate; with several, once ranked), then the turn")

    class TextPart(Strict):
        type: Literal["text"]
        text: str = text_field()

    class Message(Strict):
        role: Literal["system", "developer", "user", "assistant"]
        content: (Annotated[str, StringConstraints(max_length=text_limit)]
                  | Annotated[list[TextPart], Field(max_length=16)] | None) = None

    class StreamOptions(Strict):
        include_usage: bool = False

    class ChatRequest(Strict):
        messages: list[Message] = Field(min_length=1, max_length=history_limit + 1)
        model: str | None = None
        n: integer(1, n_limit) = Field(1, description="replies returned, best first")
        temperature: number(ge=0, le=2) | None = Field(None, description="0: greedy")
        top_p: number(gt=0, le=1) | None = None
        max_tokens: integer(1, tokens_limit) | None = None
        max_completion_tokens: integer(1, tokens_limit) | None = Field(None, description="max_tokens' newer name")
        seed: Seed | None = Field(None, description=seed_doc)
        stream: bool = False
        stream_options: StreamOptions | None = None

    return SimpleNamespace(GenerateRequest=GenerateRequest, SessionMessage=SessionMessage, ChatRequest=ChatRequest,
                           Message=Message)
