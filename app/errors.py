"""One error hierarchy; the handler turns each into `{"error": {"code", "message"}}`."""

from __future__ import annotations

from typing import Any


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


def describe_validation_errors(errors: list[Any]) -> str:
    """Pydantic's errors as one sentence per problem: `student.hidden.0: must be >= 1`."""
    parts = []
    for error in errors[:10]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) + ("." if parts and not parts[-1].endswith(".") else "")
