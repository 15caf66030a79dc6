"""What a teacher file shows after validation (a file object's `details`): its format, what
it takes and gives, its size, the layers feature losses can name, and the penultimate layer
that terms naming no layers are paired with."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from worker.kd.errors import InvalidTeacher, shorten
from worker.kd.spec import TeacherSpec
from worker.kd.teachers import EXPORT_HINT, Teacher, load_teacher, looks_like, sniff_format
from worker.kd.training.features import LayerShapes
from worker.kd.training.pairing import penultimate_layer, teacher_module

MAX_LAYERS = 1000  # details stay a readable size for very deep models
EXAMPLE_BATCH = 2  # batch 1 can be special-cased by exporters; 2 is not
STATISTICS = (".running_mean", ".running_var")  # batch-norm buffers, not parameters
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
NOTES = {
    "torchscript": (
        "TorchScript lists no layers (it allows no hooks) but its head's input, which feature "
        "and relation losses naming no layers are paired with; to name other layers upload the "
        "teacher as a torch.export program (.pt2), ONNX, or safetensors weights."
    ),
    "safetensors": (
        "Weights only: input shape, classes and layers follow once a job names the arch "
        "(teacher.arch) and the data."
    ),
}


def inspect_teacher(
    path: Path,
    spec_or_format: TeacherSpec | str = "auto",
    example_shape: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Details of the teacher in `path`, or InvalidTeacher saying what is wrong with it.

    {"format", "input_shape" (batch excluded; null for dims the file leaves open, or the whole
    shape when the format does not record it), "outputs", "num_classes", "parameters",
    "layers": [{"name", "shape"}], optionally "layers_truncated", "penultimate" ({"name",
    "shape"}: the input of the classifier head, for formats whose head can be found) and
    "note"}.
    `example_shape` (a sample's shape) lets formats that do not record their input run an
    example, which gives classes and layer shapes.
    """
    path = Path(path)
    spec = spec_or_format if isinstance(spec_or_format, TeacherSpec) else None
    fmt = spec.format if spec is not None else str(spec_or_format)
    fmt = sniff_format(path) if fmt == "auto" else fmt
    if fmt == "safetensors" and (spec is None or spec.arch is None or example_shape is None):
        return _safetensors_header(path)
    build_example = None if example_shape is None else _example(example_shape, None)
    teacher = load_teacher(path, spec if spec is not None else fmt, build_example)
    example = (
        _teacher_example(teacher)
        if example_shape is None
        else _example(example_shape, teacher.fixed_batch)
    )
    details: dict[str, Any] = {
        "format": fmt,
        "input_shape": _input_shape(teacher, example_shape),
        "outputs": teacher.num_outputs,
        "num_classes": None,
        "parameters": teacher.num_parameters,
        "layers": [],
    }
    if example is not None:
        details.update(_run(teacher, example))
        details.update(_penultimate(teacher, example))
    if fmt in NOTES:
        details["note"] = NOTES[fmt]
    return details


def _run(teacher: Teacher, example: torch.Tensor) -> dict[str, Any]:
    try:
        out = teacher(example)
        layers: LayerShapes = teacher.layers(example)
    except InvalidTeacher:
        raise
    except Exception as exc:
        raise InvalidTeacher(
            f"The teacher failed on an example batch of shape {list(example.shape)}: {shorten(exc)}"
        ) from exc
    outputs = 1 if isinstance(out, torch.Tensor) else len(out)
    logits = out if isinstance(out, torch.Tensor) else out[0]
    return {
        "outputs": teacher.num_outputs or outputs,
        "num_classes": int(logits.shape[-1]) if logits.ndim == 2 else None,
        "layers": [{"name": name, "shape": list(shape)} for name, shape in layers[:MAX_LAYERS]],
        **({"layers_truncated": True} if len(layers) > MAX_LAYERS else {}),
    }


def _penultimate(teacher: Teacher, example: torch.Tensor) -> dict[str, Any]:
    """{"penultimate": {"name", "shape"}} where the teacher's head can be found, else {}
    (an optional detail: a model whose head cannot be read is still a valid teacher)."""
    module = teacher_module(teacher)
    try:
        name = None if module is None else penultimate_layer(module, example)
        if name is None:
            return {}
        _, features = teacher.features(example, [name])
    except Exception:
        return {}
    return {"penultimate": {"name": name, "shape": list(features[name].shape[1:])}}


def _teacher_example(teacher: Teacher) -> torch.Tensor | None:
    """The file's own example input, or one built from the input shape it records."""
    carried = teacher.example_input()
    if carried is not None:
        return carried
    shape = teacher.input_shape
    if shape is None or any(d is None for d in shape):
        return None
    return _example(tuple(int(d) for d in shape if d is not None), teacher.fixed_batch)


def _example(shape: tuple[int, ...], batch: int | None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch or EXAMPLE_BATCH, *shape, generator=generator)


def _input_shape(
    teacher: Teacher, example_shape: tuple[int, ...] | None
) -> list[int | None] | None:
    if teacher.input_shape is not None:
        return list(teacher.input_shape)
    return None if example_shape is None else list(example_shape)


def _safetensors_header(path: Path) -> dict[str, Any]:
    """Tensor count and parameters from the header alone (no arch, no data yet)."""
    try:
        with safe_open(str(path), framework="pt") as weights:
            names = list(weights.keys())
            slices = [weights.get_slice(name) for name in names if not name.endswith(STATISTICS)]
            float_shapes = [s.get_shape() for s in slices if s.get_dtype() in FLOAT_DTYPES]
            parameters = sum(math.prod(shape) for shape in float_shapes)
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidTeacher(
            f"The teacher file is not safetensors weights{looks_like(path)} "
            f"({shorten(exc)}). {EXPORT_HINT}"
        ) from exc
    return {
        "format": "safetensors",
        "input_shape": None,
        "outputs": 1,
        "num_classes": None,
        "parameters": parameters,
        "tensors": len(names),
        "layers": [],
        "note": NOTES["safetensors"],
    }
