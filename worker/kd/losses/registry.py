"""The loss registry: a dict and a decorator, torchdistill style.

@register_loss("kd")
class KD(LogitLoss): ...

get_loss("kd", temperature=4.0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from worker.kd.catalogue import TaskKind, loss_meta
from worker.kd.losses.base import DistillationLoss, Family

L = TypeVar("L", bound=DistillationLoss)

LOSSES: dict[str, type[DistillationLoss]] = {}


def register_loss(name: str) -> Callable[[type[L]], type[L]]:
    """Register a `DistillationLoss` subclass under `name`."""

    def register(cls: type[L]) -> type[L]:
        if name in LOSSES:
            raise ValueError(f"A loss named {name!r} is already registered: {LOSSES[name]!r}")
        meta = loss_meta(name)  # every loss is catalogued first (worker.kd.catalogue)
        if cls.family != meta.family:
            raise ValueError(
                f"Loss {name!r} is a {cls.family} loss but the catalogue says {meta.family}."
            )
        cls.key = name
        LOSSES[name] = cls
        return cls

    return register


def loss_class(name: str) -> type[DistillationLoss]:
    if name not in LOSSES:
        raise ValueError(f"No loss {name!r} registered; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def get_loss(name: str, **params: Any) -> DistillationLoss:
    """A new instance of the loss registered as `name`, built with `params`."""
    cls = loss_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"Bad parameters for loss {name!r}: {exc}") from exc


@dataclass(frozen=True)
class LossInfo:
    name: str
    family: Family
    needs_layers: bool  # a term names teacher_layer and student_layer
    needs_labels: bool
    needs_shapes: bool  # built as cls(student_shape, teacher_shape, **params)
    layer_mapped: bool  # transformer layers default to the student's layer map
    task_kinds: tuple[TaskKind, ...]
    summary: str  # first paragraph of the docstring, on one line


def loss_info(name: str) -> LossInfo:
    """What kind of loss `name` is and which inputs it needs."""
    cls = loss_class(name)
    first_paragraph = (cls.__doc__ or "").strip().split("\n\n")[0]
    return LossInfo(
        name=name,
        family=cls.family,
        needs_layers=cls.uses_layers(),
        needs_labels=cls.needs_labels,
        needs_shapes=cls.needs_shapes,
        layer_mapped=loss_meta(name).layer_mapped,
        task_kinds=loss_meta(name).task_kinds,
        summary=" ".join(first_paragraph.split()),
    )
