"""Small helpers that keep error messages short and readable."""

from __future__ import annotations

from collections.abc import Sequence


def shorten(exc: BaseException, limit: int = 200) -> str:
    """One line of an exception's text, cut to `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_shape(shape: Sequence[int]) -> str:
    """A shape as Python writes a tuple: (64,), (1, 8, 8)."""
    dims = [str(int(d)) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
