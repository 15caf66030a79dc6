"""Safetensors teachers: weights (`save_file(model.state_dict(), ...)`) plus their arch.

The architecture comes from the spec, inline, as a student-registry arch
(`{"file_id": ..., "arch": "resnet", "depth": 20}`); it is built for the data's input shape
(from `example`, a batch of dataset inputs) and for the class count the weights imply: the
rows of the last `nn.Linear`'s weight. The module is eager, so layers are module paths read
through forward hooks. Safetensors is a JSON header and raw tensor bytes: nothing to unpickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from worker.kd.errors import InvalidSpec, InvalidTeacher, fmt_shape, shorten
from worker.kd.students import build_student, parse_student_spec
from worker.kd.teachers.base import EXPORT_HINT, Features, Teacher, freeze
from worker.kd.teachers.registry import looks_like, register_teacher
from worker.kd.training.features import LayerShapes, describe_layers, module_features

LISTED_KEYS = 6


class ModuleTeacher(Teacher):
    """An eager module as a teacher."""

    format = "safetensors"

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.module = freeze(module.eval())
        self.sample_shape = input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(x)

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, Features]:
        if layers:
            self._check_layers(layers, [name for name, _ in self.module.named_modules() if name])
        with torch.no_grad():
            return module_features(self.module, x, layers)

    def layers(self, example: torch.Tensor) -> LayerShapes:
        return describe_layers(self.module, example)

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        return self.sample_shape


@register_teacher("safetensors")
def load_safetensors(
    path: Path, arch: dict[str, Any] | None, example: torch.Tensor | None
) -> Teacher:
    if arch is None:
        raise InvalidSpec(
            "A safetensors teacher holds weights only: give its architecture in the spec, as "
            'for a student: "teacher": {"file_id": ..., "arch": "cnn", "channels": [32, 64]}.'
        )
    if example is None:
        raise ValueError("safetensors teachers are built for the data: pass a batch as example")
    spec = parse_student_spec(arch, where="teacher")
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidTeacher(
            f"The teacher file is not safetensors weights{looks_like(path)} "
            f"({shorten(exc)}). {EXPORT_HINT}"
        ) from exc
    input_shape = tuple(int(d) for d in example.shape[1:])
    module = build_student(spec, input_shape, head_classes(spec, input_shape, weights))
    _check_fit(module, weights, f"the {spec.arch} arch for inputs {fmt_shape(input_shape)}")
    module.load_state_dict(weights, strict=True)
    return ModuleTeacher(module, input_shape)


def head_classes(spec: Any, input_shape: tuple[int, ...], weights: dict[str, torch.Tensor]) -> int:
    """K: the output rows of the arch's last linear layer, as the weights have it."""
    with torch.device("meta"):
        skeleton = build_student(spec, input_shape, 2)
    heads = [name for name, module in skeleton.named_modules() if isinstance(module, nn.Linear)]
    key = f"{heads[-1]}.weight" if heads else None
    if key is None or key not in weights or weights[key].ndim != 2:
        listed = ", ".join(list(weights)[:LISTED_KEYS])
        raise InvalidTeacher(
            f"The safetensors weights do not fit the {spec.arch} arch: it expects a final "
            f"layer {key!r} (K, features), the file holds {listed}"
            f"{', ...' if len(weights) > LISTED_KEYS else ''}."
        )
    return int(weights[key].shape[0])


def _check_fit(module: nn.Module, weights: dict[str, torch.Tensor], arch: str) -> None:
    """InvalidTeacher listing missing, unexpected and mis-shaped tensors, if any."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    problems = [f"missing {name}" for name in expected if name not in weights]
    problems += [f"unexpected {name}" for name in weights if name not in expected]
    problems += [
        f"{name} is {fmt_shape(weights[name].shape)} in the file, {fmt_shape(shape)} in the arch"
        for name, shape in expected.items()
        if name in weights and tuple(weights[name].shape) != shape
    ]
    if problems:
        more = f" and {len(problems) - LISTED_KEYS} more" if len(problems) > LISTED_KEYS else ""
        raise InvalidTeacher(
            f"The safetensors weights do not fit {arch}: {'; '.join(problems[:LISTED_KEYS])}"
            f"{more}. Give the arch fields the model was trained with (the spec's teacher.arch)."
        )
