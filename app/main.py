"""The FastAPI application: routers, and one handler that turns every error into
`{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import web
from app.api import files, health, jobs, queues, webhooks
from app.config import get_settings
from app.db import close_read_pool, open_read_pool
from app.errors import ApiError, describe_validation_errors
from app.schemas import ErrorResponse

log = logging.getLogger(__name__)
UPLOAD_ROUTE = ("POST", "/v1/files")

_ERRORS = {
    400: {"model": ErrorResponse},
    401: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    429: {"model": ErrorResponse},
}


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _error(exc.status_code, exc.code, exc.message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    body = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(body, "field_info", None), "annotation", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        model = None  # only a JSON body's model can name the field a key was meant to be
    return _error(422, "invalid_request", describe_validation_errors(list(exc.errors()), model))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


def _body_too_large(limit: int) -> str:
    return (
        f"The request body is larger than this server accepts ({limit:,} bytes); a job spec "
        "is a few kilobytes: upload files with POST /v1/files and name them by id."
    )


class BodyLimit:
    """Caps every request body except a file upload (which streams to disk under its own
    cap, app/uploads.py). Bodies are read whole into memory before they are parsed, so a
    cap on them bounds what one request can make the server hold: a declared length over
    it is refused before anything is read, a streamed body once it passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) == UPLOAD_ROUTE:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = _error(413, "payload_too_large", _body_too_large(self.max_bytes))
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # an HTTPException: FastAPI lets it through
                    raise StarletteHTTPException(413, _body_too_large(self.max_bytes))
            return message

        await self.app(scope, limited, send)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _error(500, "internal_error", "Something went wrong on our side; try again later.")


SIGN_IN_PATHS = frozenset({"/login", "/logout"})
SAME_SITE_FETCH = frozenset({"same-origin", "none"})  # `none`: typed or bookmarked by the user


class SameOriginSignIn:
    """Refuses cross-site posts to the dashboard's sign-in and sign-out (login CSRF: a page
    elsewhere signing the browser in to the attacker's account). A browser says where a
    form post comes from in `Origin`, and in `Sec-Fetch-Site` where it sends it; clients
    that send neither (curl, scripts) are not browsers riding on a user's cookies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in SIGN_IN_PATHS:
            refusal = self.cross_site(Headers(scope=scope), scope)
            if refusal is not None:
                await _error(403, "cross_site_request", refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def cross_site(headers: Headers, scope: Scope) -> str | None:
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site not in SAME_SITE_FETCH:
            return (
                f"This form was posted from another site (Sec-Fetch-Site: {fetch_site}); "
                "sign in from the dashboard's own page."
            )
        origin = headers.get("origin")
        if origin is None:
            return None
        scheme = "https" if scope.get("scheme") == "https" else "http"
        expected = f"{scheme}://{headers.get('host', '')}"
        if origin.rstrip("/").lower() != expected.lower():
            return (
                f"This form was posted from {origin}, not from this dashboard; sign in from "
                "the dashboard's own page."
            )
        return None


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    await open_read_pool()  # PostgreSQL's asyncpg pool for the hot read (app/db.py)
    yield
    await close_read_pool()


def create_app() -> FastAPI:
    app = FastAPI(
        lifespan=_lifespan,
        title="Distillery",
        version="0.1.0",
        description="Knowledge distillation as a service: upload a teacher and a dataset, "
        "name a student, get back a smaller model with proof of what it kept.",
        responses=_ERRORS,  # type: ignore[arg-type]
    )
    app.add_middleware(BodyLimit, max_bytes=get_settings().max_json_bytes)
    app.add_middleware(SameOriginSignIn)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(health.router)
    app.include_router(files.router)
    app.include_router(jobs.router)
    app.include_router(webhooks.router)
    app.include_router(queues.router)
    app.include_router(web.router)
    app.mount("/static", web.static_files(), name="static")
    return app


app = create_app()
