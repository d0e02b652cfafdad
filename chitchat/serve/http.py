"""HTTP plumbing of `chitchat serve`: OpenAI-style JSON errors, the bearer token and the body limit.

Every error the server sends is `{"error": {"message": ..., "type": ..., "param": ...}}`, with the
status code saying what went wrong: 400 malformed request (bad JSON, bad Content-Length), 401 no or
wrong token, 404, 405, 413 body too large, 422 well-formed JSON that breaks the schema or a limit,
503 busy or shutting down. Both middlewares are pure ASGI: they answer before the application reads
anything, and the body limit counts the bytes as they arrive, so a chunked body without a
Content-Length is cut off too.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ERROR_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    500: "server_error",
    503: "overloaded_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error")


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type(status), "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


class ApiError(HTTPException):
    """An HTTP error with a message for the client (and the parameter at fault, when there is one)."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(status, message, headers)
        self.param = param


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"request body over the limit of {limit} bytes")


def bearer_token(authorization: bytes) -> bytes:
    """The token of an `Authorization: Bearer <token>` header (the scheme name in any case, as HTTP
    says: `bearer` and `BEARER` too); b"" for any other header."""
    scheme, _, token = authorization.strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


class BearerAuth:
    """Requests must carry `Authorization: Bearer <token>`, except on the `open_paths`."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str]):
        self.app = app
        self.expected = token.encode("latin-1")
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            given = bearer_token(dict(scope["headers"]).get(b"authorization", b""))
            if not hmac.compare_digest(given, self.expected):
                response = error_response(401, "missing or wrong bearer token (Authorization: Bearer <key>)",
                                          headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """At most `limit` bytes of request body: a larger Content-Length is refused before the body is
    read, and a body without one is counted as it arrives (the reader gets `BodyTooLarge`)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await error_response(400, "invalid Content-Length header")(scope, receive, send)
                return
            if int(length) > self.limit:
                await error_response(413, f"request body over the limit of {self.limit} bytes")(scope, receive, send)
                return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as e:  # normally turned into a response inside the app; this is the fallback
            if started:
                raise
            await error_response(413, e.detail)(scope, receive, send)
