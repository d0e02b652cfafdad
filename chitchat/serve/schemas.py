"""Request and response bodies of `chitchat serve` (pydantic), with the configured limits in them.

Requests are validated strictly (a string where a number belongs is a 422, never a coercion) and
fields the server does not know are ignored, as OpenAI clients send many. The server's limits live in
the schema, so the OpenAPI document states them. The reply settings a request may change are made
from `ReplySettings`' declarations (chitchat.engine.settings): their names, types, help and the ranges
the document states; their ranges are checked by `ReplySettings.validate`, the check every surface
uses, so a bad value gets the same message here as on the command line and in the chat.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, create_model

from chitchat.engine.settings import describe


def _integral(value):
    """5.0 is an integer in JSON (and JSON Schema); "5" and true are not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(low: int, high: int, **kw):
    """An integer in [low, high]; the bounds inside the type, so that the JSON schema states them when
    the field may also be null."""
    return Annotated[int, Field(ge=low, le=high, **kw), BeforeValidator(_integral)]


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
    source: str = Field(description="where the candidate came from: sampled, or another candidate source")
    finished: bool = Field(description="false when the reply was cut at max_len")
    scores: dict[str, float | str] = Field(description="each scoring computed for it (the ranking's, at least): "
                                                       "lower is better; a string for NaN or infinity")


class GenerateResponse(BaseModel):
    generated_text: str
    candidates: list[CandidateOut] | None = None
    chosen: int | None = Field(None, description="index of the reply among the candidates")
    ranking: str | None = Field(None, description="the ranking used: mmi, pmi, a mix such as mmi+0.5*pmi, or likelihood")


def setting_field(name: str, **overrides):
    """(type, Field) of reply setting `name` as a request field, optional (null: the server's), its
    range stated in the document (`ReplySettings.validate` enforces it)."""
    d = next(x for x in describe() if x["name"] == name)
    doc = {k: v for k, v in (("minimum", d["low"]), ("maximum", d["high"])) if v is not None}
    kind = {int: Annotated[int, BeforeValidator(_integral)], float: Annotated[float, Field(allow_inf_nan=True)],
            str: Annotated[str, StringConstraints(max_length=200)]}[d["type"]]
    description = overrides.pop("description", d["help"])
    return kind | None, Field(None, description=description, json_schema_extra=doc, **overrides)


def settings_model(name: str = "TurnSettings"):
    """Every reply setting, each optional: a session message's `settings`."""
    fields = {d["name"]: setting_field(d["name"]) for d in describe() if d["name"] != "seed"}
    fields["mmi"] = (bool | None, Field(None, description="deprecated: false is the ranking likelihood, "
                                                          "true the server's ranking"))
    return create_model(name, __base__=Strict, __doc__="This turn's settings; a missing or null one is the server's.",
                        **fields)


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

    temperature_type, temperature_field = setting_field("temperature", description="0: greedy")
    top_p_type, top_p_field = setting_field("top_p")
    seed_type, seed_field = setting_field("seed", description="the same seed and input give the same reply")

    class GenerateRequest(Strict):
        text: str = text_field(min_length=1, description="the user's new utterance")
        history: list[Annotated[str, StringConstraints(max_length=text_limit)]] = Field(
            default_factory=list, max_length=history_limit,
            description="the dialogue so far, oldest first, alternating user and bot")
        candidates: bool = Field(False, description="also return every sampled candidate and its scores")
        seed: seed_type = seed_field

    TurnSettings = settings_model()

    class SessionMessage(Strict):
        text: str = text_field(min_length=1)
        seed: seed_type = seed_field
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
        temperature: temperature_type = temperature_field
        top_p: top_p_type = top_p_field
        max_tokens: integer(1, tokens_limit) | None = Field(None, description="the reply's max_len")
        max_completion_tokens: integer(1, tokens_limit) | None = Field(None, description="max_tokens' newer name")
        seed: seed_type = seed_field
        stream: bool = False
        stream_options: StreamOptions | None = None

    return SimpleNamespace(GenerateRequest=GenerateRequest, SessionMessage=SessionMessage, ChatRequest=ChatRequest,
                           Message=Message)
