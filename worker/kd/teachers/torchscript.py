"""TorchScript teachers (`torch.jit.script(model).save(...)` or `torch.jit.trace`).

The archive is read by TorchScript's own loader, whose unpickler builds only TorchScript
types; no Python pickle runs. TorchScript allows no forward hooks, so these teachers list
no layers: `layers()` is empty, and `features()` reads only the inputs of linear layers
("fc:input", the penultimate features automatic pairing uses), naming the formats that give
other layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from worker.kd.errors import InvalidTeacher, shorten
from worker.kd.teachers.base import EXPORT_HINT, Features, Teacher, freeze
from worker.kd.teachers.registry import looks_like, register_teacher
from worker.kd.training.features import module_features


class TorchScriptTeacher(Teacher):
    format = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = freeze(module.eval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(x)

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, Features]:
        with torch.no_grad():
            return module_features(self.module, x, layers)


@register_teacher("torchscript")
def load_torchscript(path: Path, arch: dict[str, Any] | None, example: Any) -> Teacher:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise InvalidTeacher(
            f"The teacher file is not a TorchScript module{looks_like(path)} "
            f"(torch.jit.load failed: {shorten(exc)}). {EXPORT_HINT}"
        ) from exc
    return TorchScriptTeacher(module)
