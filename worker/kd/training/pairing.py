"""Automatic layer pairing: a feature or relation term that names no layers compares the
penultimate features of both models, the input of each one's classifier head.

The head is the last linear layer a model's forward calls; its input is the layer
"<head>:input" (see `features`). Students of every kind give it (mlp, cnn, resnet and
TorchScript files); teachers give it when their module can be read: TorchScript and
safetensors teachers, and plain modules. Other teachers (ONNX, torch.export) get a message
saying to name the layers. Transformer terms (`layer_mapped` in the catalogue) are paired by
the student's layer map instead and are left alone here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from worker.kd.catalogue import loss_meta
from worker.kd.errors import InvalidSpec
from worker.kd.spec import PAIRABLE_TEACHER_FORMATS
from worker.kd.training.features import final_linear, input_layer

PENULTIMATE = "penultimate"


@dataclass(frozen=True)
class LayerPair:
    """Which student layer a term compares with which teacher layer, and why those."""

    student: str
    teacher: str
    how: str
    losses: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "student": self.student,
            "teacher": self.teacher,
            "how": self.how,
            "losses": list(self.losses),
        }


def needs_pairing(term: dict[str, Any]) -> bool:
    """A feature or relation term that names neither layer (and has no layer map)."""
    meta = loss_meta(str(term["kind"]))
    named = term.get("teacher_layer") or term.get("student_layer")
    return meta.needs_layers and not meta.layer_mapped and not named


def penultimate_layer(module: nn.Module, example: torch.Tensor) -> str | None:
    """The input of `module`'s classifier head ("fc:input"), or None when it has none."""
    head = final_linear(module, example)
    return None if head is None else input_layer(head)


def teacher_module(teacher: nn.Module) -> nn.Module | None:
    """The module a teacher's head is found in: a plain module itself, the wrapped module of
    a teacher of PAIRABLE_TEACHER_FORMATS; None for other formats."""
    fmt = getattr(teacher, "format", None)
    if fmt is None:
        return teacher
    module = getattr(teacher, "module", None)
    return module if fmt in PAIRABLE_TEACHER_FORMATS and isinstance(module, nn.Module) else None


def pair_layers(
    terms: Sequence[dict[str, Any]], student: nn.Module, teacher: nn.Module, example: torch.Tensor
) -> tuple[list[dict[str, Any]], list[LayerPair]]:
    """`terms` with the layers of unpaired feature and relation terms filled in (penultimate
    to penultimate), and the pairings made; InvalidSpec when a model has no head to pair."""
    unpaired = [index for index, term in enumerate(terms) if needs_pairing(term)]
    if not unpaired:
        return list(terms), []
    first = f"distillation.losses[{unpaired[0]}] ({terms[unpaired[0]]['kind']!r})"
    student_layer = penultimate_layer(student, example)
    if student_layer is None:
        raise InvalidSpec(
            f"{first} names no layers, and the student calls no linear classifier layer whose "
            "input could be paired; name student_layer and teacher_layer."
        )
    module = teacher_module(teacher)
    teacher_layer = None if module is None else penultimate_layer(module, example)
    if teacher_layer is None:
        fmt = getattr(teacher, "format", "given")
        why = (
            "calls no linear classifier layer"
            if module is not None
            else "has layers that cannot be paired automatically (only TorchScript and "
            "safetensors teachers can)"
        )
        raise InvalidSpec(
            f"{first} names no layers, and the {fmt} teacher {why}: name the layers, "
            '"teacher_layer" one of the teacher file\'s details.layers and "student_layer" '
            "a module path of the student."
        )
    paired = [
        {**term, "student_layer": student_layer, "teacher_layer": teacher_layer}
        if index in unpaired
        else dict(term)
        for index, term in enumerate(terms)
    ]
    losses = tuple(str(terms[index].get("name", terms[index]["kind"])) for index in unpaired)
    return paired, [LayerPair(student_layer, teacher_layer, PENULTIMATE, losses)]
