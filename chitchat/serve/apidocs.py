"""`/docs`: Swagger UI for `chitchat serve`'s OpenAPI document, served from this server alone.

FastAPI's own `/docs` loads Swagger UI from a CDN (no integrity check) and needs a policy that
allows that CDN and inline script. Here the page's script and style files come from the
`fastapi-offline` package (Swagger UI 5, which reads the OpenAPI 3.1 document FastAPI writes; the
`swagger-ui-bundle` package ships Swagger UI 4, which cannot), and its one inline script is allowed
by its hash: the page's policy has no 'unsafe-inline' and names no other origin.

The page and its files are open, like `/openapi.json`: they hold nothing secret, and a browser
cannot send a bearer token to open a page. With CHITCHAT_API_KEY set, the OpenAPI document declares
the bearer scheme, so Swagger UI's **Authorize** button takes the key and sends it with every
"Try it out" request.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from chitchat.serve.http import ApiError
from chitchat.serve.security import inline_hashes

DOCS_PATH = "/docs"
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}
DOCS_PATHS = frozenset({DOCS_PATH, *(f"{DOCS_PATH}/{name}" for name in ASSETS)})


def docs_page(title: str, openapi_url: str = "/openapi.json") -> str:
    return get_swagger_ui_html(openapi_url=openapi_url, title=f"{title} - Swagger UI", oauth2_redirect_url=None,
                               swagger_js_url=f"{DOCS_PATH}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_PATH}/swagger-ui.css",
                               swagger_favicon_url=f"{DOCS_PATH}/favicon.png").body.decode()


def docs_csp(page: str) -> str:
    """Swagger UI's policy: its files from this origin, its inline script by hash, requests to this origin."""
    return (f"default-src 'none'; script-src 'self' {' '.join(inline_hashes(page, 'script'))}; style-src 'self'; "
            f"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def add_docs(app: FastAPI) -> str:
    """Serve /docs and its files (the FastAPI app made with docs_url=None); the page's policy."""
    page = docs_page(app.title, app.openapi_url or "/openapi.json")
    assets = files("fastapi_offline").joinpath("static")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui():
        return HTMLResponse(page)

    @app.get(DOCS_PATH + "/{name}", include_in_schema=False)
    async def swagger_asset(name: str):
        if name not in ASSETS:
            raise ApiError(404, "Not Found")
        return FileResponse(str(assets.joinpath(name)), media_type=ASSETS[name])

    return docs_csp(page)
