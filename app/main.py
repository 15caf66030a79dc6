"""The FastAPI application: routers, and one handler that turns every error into
`{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import web
from app.api import files, health, jobs, queues, webhooks
from app.errors import ApiError, describe_validation_errors
from app.schemas import ErrorResponse

log = logging.getLogger(__name__)

_ERRORS = {
    400: {"model": ErrorResponse},
    401: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
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


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _error(422, "invalid_request", describe_validation_errors(list(exc.errors())))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _error(500, "internal_error", "Something went wrong on our side; try again later.")


def create_app() -> FastAPI:
    app = FastAPI(
        title="Distillery",
        version="0.1.0",
        description="Knowledge distillation as a service: upload a teacher and a dataset, "
        "name a student, get back a smaller model with proof of what it kept.",
        responses=_ERRORS,  # type: ignore[arg-type]
    )
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
