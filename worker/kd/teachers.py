"""Teacher loaders, by format: a registry so later formats (torch.export, ONNX) plug in.

A loader takes a file path and returns a module mapping a batch of inputs to logits (B, K).
Nothing here unpickles: TorchScript archives are read by TorchScript's own loader.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from worker.kd.errors import InvalidTeacher
from worker.kd.text import fmt_shape, shorten

TeacherLoader = Callable[[Path], nn.Module]

TEACHER_LOADERS: dict[str, TeacherLoader] = {}

EXPORT_HINT = "Export it with torch.jit.script(model).save('teacher.pt') or torch.jit.trace."
PICKLE_MAGIC = b"\x80"
ZIP_MAGIC = b"PK\x03\x04"


def register_teacher(name: str) -> Callable[[TeacherLoader], TeacherLoader]:
    def register(loader: TeacherLoader) -> TeacherLoader:
        TEACHER_LOADERS[name] = loader
        return loader

    return register


def get_teacher_loader(name: str) -> TeacherLoader:
    if name not in TEACHER_LOADERS:
        known = ", ".join(sorted(TEACHER_LOADERS))
        raise ValueError(f"No teacher format {name!r} registered; known formats: {known}")
    return TEACHER_LOADERS[name]


def load_teacher(path: Path, fmt: str = "torchscript") -> nn.Module:
    """Load a teacher with the loader registered for `fmt`, in eval mode."""
    teacher = get_teacher_loader(fmt)(path)
    teacher.eval()
    return teacher


@register_teacher("torchscript")
def load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise InvalidTeacher(
            f"The teacher file is not a TorchScript module{_looks_like(path)} "
            f"(torch.jit.load failed: {shorten(exc)}). {EXPORT_HINT}"
        ) from exc


def _looks_like(path: Path) -> str:
    """A hint at what the file is instead, from its first bytes (never unpickled)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return ""
    if head.startswith(PICKLE_MAGIC):
        return "; it looks like a Python pickle (torch.save of a model or state_dict)"
    if head == ZIP_MAGIC:
        return "; it is a zip archive, perhaps a torch.save checkpoint rather than a scripted model"
    return ""


def probe_teacher(teacher: nn.Module, sample: torch.Tensor) -> int:
    """Run the teacher on a small batch; return its class count K or raise InvalidTeacher."""
    batch = len(sample)
    try:
        with torch.inference_mode():
            out = teacher(sample)  # (B, K) expected
    except Exception as exc:
        raise InvalidTeacher(
            f"The teacher failed on a batch of {batch} dataset inputs of shape "
            f"{fmt_shape(sample.shape)}: {shorten(exc)}. It must accept inputs shaped like the "
            "dataset's 'x' (with a leading batch dimension) and return logits (B, K)."
        ) from exc
    return _check_logits(out, batch)


def _check_logits(out: object, batch: int) -> int:
    expected = f"It must return one float tensor of logits shaped ({batch}, K), K >= 2."
    if not isinstance(out, torch.Tensor):
        raise InvalidTeacher(f"The teacher returned a {type(out).__name__}. {expected}")
    if out.ndim != 2 or out.shape[0] != batch or out.shape[1] < 2:
        raise InvalidTeacher(f"The teacher returned shape {fmt_shape(out.shape)}. {expected}")
    if not out.is_floating_point():
        raise InvalidTeacher(f"The teacher returned dtype {out.dtype}. {expected}")
    if not torch.isfinite(out).all():
        raise InvalidTeacher("The teacher returned NaN or infinite logits on dataset inputs.")
    return int(out.shape[1])
