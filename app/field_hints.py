"""The field a misspelt key most likely meant: `training.epoch` → `epochs`.

Pydantic reports an unknown key as `extra_forbidden` at a location such as
`("student", "mlp", "hiden")`; walking the model along that location gives the fields that
were allowed there, and difflib picks the nearest.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel


def known_fields(model: type[BaseModel], location: Sequence[int | str]) -> list[str]:
    """The field names allowed where the last part of `location` was given."""
    candidates = [model]
    for part in location[:-1]:
        if isinstance(part, int):
            continue  # an index into a list: the element type was already unwrapped
        with_field = [m for m in candidates if part in m.model_fields]
        if with_field:
            candidates = [
                inner
                for m in with_field
                for inner in _models_in(m.model_fields[str(part)].annotation)
            ]
        else:  # a discriminated union's tag, e.g. "mlp" in ("student", "mlp", "hiden")
            candidates = [m for m in candidates if _has_tag(m, part)] or candidates
    names = {name for m in candidates for name in m.model_fields}
    return sorted(names)


def unknown_field_message(model: type[BaseModel], location: Sequence[int | str]) -> str:
    """`unknown field; did you mean 'epochs'?`, or the fields allowed when none is near."""
    names = known_fields(model, location)
    near = difflib.get_close_matches(str(location[-1]), names, n=1, cutoff=0.6)
    if near:
        return f"unknown field; did you mean {near[0]!r}?"
    if names:
        return "unknown field; the fields here are " + ", ".join(names)
    return "unknown field"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation: through Optional, unions, Annotated,
    lists and dict values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    args: tuple[Any, ...] = typing.get_args(annotation)
    if origin is typing.Annotated:
        args = args[:1]
    elif origin is dict:
        args = args[1:]
    elif origin not in (typing.Union, types.UnionType, list, tuple, set, frozenset):
        return []
    return [model for arg in args for model in _models_in(arg)]


def _has_tag(model: type[BaseModel], tag: int | str) -> bool:
    """Whether one of the model's fields is a Literal that admits `tag`."""
    for field in model.model_fields.values():
        if typing.get_origin(field.annotation) is typing.Literal and tag in typing.get_args(
            field.annotation
        ):
            return True
    return False
