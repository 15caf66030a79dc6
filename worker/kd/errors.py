"""Errors the engine raises; each carries a stable `code` and a message a person can act on."""

from __future__ import annotations

from collections.abc import Sequence


class KDError(Exception):
    """Base class: `code` is stable and machine-readable, `message` says what to fix."""

    code = "distillation_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidTeacher(KDError):
    code = "invalid_teacher"


class InvalidDataset(KDError):
    code = "invalid_dataset"


class InvalidSpec(KDError):
    code = "invalid_spec"


class IncompatibleModels(KDError):
    """Teacher, student and data do not fit together (shapes, class counts)."""

    code = "incompatible_models"


class Cancelled(KDError):
    """Raised inside the loop when the reporter says the job was cancelled."""

    code = "cancelled"

    def __init__(self, message: str = "The job was cancelled.") -> None:
        super().__init__(message)


# Helpers that keep error messages short and readable.
def shorten(exc: BaseException, limit: int = 200) -> str:
    """One line of an exception's text, cut to `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_shape(shape: Sequence[int]) -> str:
    """A shape as Python writes a tuple: (64,), (1, 8, 8)."""
    dims = [str(int(d)) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
