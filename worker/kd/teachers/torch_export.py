"""torch.export teachers (`torch.export.save(torch.export.export(model, (x,)), "t.pt2")`).

The archive is vetted first (see `pt2_vetting`: `torch.export.load` would unpickle, eval and
exec parts of an untrusted file), then loaded and run as `program.module()`. Layers are the
original model's module paths: `torch.export.unflatten` rebuilds the module hierarchy, and
forward hooks on its submodules read their outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.kd.errors import InvalidSpec, InvalidTeacher, shorten
from worker.kd.teachers.base import EXPORT_HINT, Features, Teacher, freeze
from worker.kd.teachers.pt2_vetting import vet_archive, vet_program
from worker.kd.teachers.registry import looks_like, register_teacher
from worker.kd.training.features import LayerShapes, describe_layers, module_features

DYNAMIC_BATCH_HINT = (
    "Export it with a dynamic batch: torch.export.export(model, (x,), "
    "dynamic_shapes=({0: torch.export.Dim('batch')},))."
)


class TorchExportTeacher(Teacher):
    format = "torch_export"

    def __init__(self, program: torch.export.ExportedProgram, module: nn.Module) -> None:
        super().__init__()
        self.program = program
        self.module = freeze(module)
        self.unflattened: nn.Module | None = None  # built when layers are first asked for
        self._input = _user_input(program)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_batch(x)
        with torch.no_grad():
            return self.module(x)

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, Features]:
        if not layers:
            return self(x), {}
        self._check_batch(x)
        unflattened = self._unflattened().to(x.device)
        self._check_layers(layers, [name for name, _ in unflattened.named_modules() if name])
        with torch.no_grad():
            return module_features(unflattened, x, layers)

    def layers(self, example: torch.Tensor) -> LayerShapes:
        self._check_batch(example)
        return describe_layers(self._unflattened().to(example.device), example)

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        value = self._input.meta.get("val")
        if not isinstance(value, torch.Tensor):
            return None
        return tuple(d if isinstance(d, int) else None for d in value.shape[1:])

    @property
    def num_outputs(self) -> int:
        return len(self.program.graph_signature.user_outputs)

    @property
    def fixed_batch(self) -> int | None:
        value = self._input.meta.get("val")
        if isinstance(value, torch.Tensor) and value.ndim and isinstance(value.shape[0], int):
            return value.shape[0]
        return None

    def example_input(self) -> torch.Tensor | None:
        if self.program.example_inputs is None:
            return None
        args: tuple[Any, ...] = self.program.example_inputs[0]
        return args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else None

    def _unflattened(self) -> nn.Module:
        if self.unflattened is None:
            try:
                self.unflattened = freeze(torch.export.unflatten(self.program))
            except Exception as exc:
                raise InvalidSpec(
                    "The torch.export teacher's module hierarchy could not be rebuilt "
                    f"({shorten(exc)}), so its layers cannot be read. Export the model without "
                    "shared submodules, or give the teacher as ONNX."
                ) from exc
        return self.unflattened

    def _check_batch(self, x: torch.Tensor) -> None:
        batch = self.fixed_batch
        if batch is not None and x.shape[0] != batch:
            raise InvalidTeacher(
                f"The torch.export teacher was exported for batches of exactly {batch} and "
                f"cannot run a batch of {x.shape[0]}. {DYNAMIC_BATCH_HINT}"
            )


@register_teacher("torch_export")
def load_torch_export(path: Path, arch: dict[str, Any] | None, example: Any) -> Teacher:
    vet_archive(path)
    try:
        with open(path, "rb") as f:
            program = torch.export.load(f)
    except Exception as exc:
        raise InvalidTeacher(
            f"The teacher file is not a torch.export program{looks_like(path)} "
            f"(torch.export.load failed: {shorten(exc)}). {EXPORT_HINT}"
        ) from exc
    vet_program(program)
    _user_input(program)
    try:
        module = program.module()
    except Exception as exc:
        raise InvalidTeacher(
            f"The torch.export program could not be turned into a module: {shorten(exc)}."
        ) from exc
    return TorchExportTeacher(program, module)


def _user_input(program: torch.export.ExportedProgram) -> torch.fx.Node:
    """The placeholder of the program's one input tensor."""
    names = program.graph_signature.user_inputs
    if len(names) != 1:
        raise InvalidTeacher(
            f"The torch.export program takes {len(names)} inputs; Distillery feeds it one tensor "
            f"(B, *input_shape). {DYNAMIC_BATCH_HINT}"
        )
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == names[0]:
            return node
    raise InvalidTeacher("The torch.export program's input is missing from its graph.")
