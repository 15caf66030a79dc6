"""TorchScript teachers (`torch.jit.script(model).save(...)` or `torch.jit.trace`).

The archive is read by TorchScript's own loader, whose unpickler builds only TorchScript
types; no Python pickle runs. TorchScript allows no forward hooks, so these teachers give
no layers: `layers()` is empty and `features()` names the formats that do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from worker.kd.errors import InvalidTeacher, shorten
from worker.kd.teachers.base import EXPORT_HINT, Teacher, freeze
from worker.kd.teachers.registry import looks_like, register_teacher


class TorchScriptTeacher(Teacher):
    format = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = freeze(module.eval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(x)


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
