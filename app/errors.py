"""One error hierarchy; the handler turns each into `{"error": {"code", "message"}}`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.field_hints import unknown_field_message


class ApiError(Exception):
    """An error a client can act on: a stable `code`, an HTTP status, a sentence."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"


class TooManyRequests(ApiError):
    status_code = 429
    code = "rate_limited"


class Unprocessable(ApiError):
    status_code = 422
    code = "invalid_request"


def describe_validation_errors(errors: list[Any], model: type[BaseModel] | None = None) -> str:
    """Pydantic's errors as one sentence per problem: `student.hidden.0: must be >= 1`; with
    the `model` validated, an unknown key names the nearest known field."""
    parts = []
    for error in errors[:10]:
        loc = [part for part in error.get("loc", ()) if part != "body"]
        location = ".".join(str(part) for part in loc)
        message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden" and model is not None and loc:
            message = unknown_field_message(model, loc)
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) + ("." if parts and not parts[-1].endswith((".", "?")) else "")
