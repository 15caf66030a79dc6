"""The teacher-format registry, and `load_teacher`, which picks a format by content.

@register_teacher("onnx")
def load_onnx(path, arch, example) -> Teacher: ...

Sniffing reads bytes and zip member names only; nothing is unpickled to find out.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from worker.kd.errors import InvalidTeacher, shorten
from worker.kd.formats import read_head, sniff_file
from worker.kd.spec import TeacherSpec
from worker.kd.teachers.base import EXPORT_HINT, Teacher
from worker.kd.teachers.hf_zip import load_hf_zip

# (file, the spec's inline architecture for safetensors weights, a batch of dataset inputs)
TeacherLoader = Callable[[Path, dict[str, Any] | None, torch.Tensor | None], Teacher]

TEACHER_LOADERS: dict[str, TeacherLoader] = {}

PICKLE_MAGIC = b"\x80"
SNIFFED_TEACHER_FORMATS = ("torchscript", "torch_export", "hf_zip", "safetensors")
ZIP_MAGIC = b"PK\x03\x04"
NOT_A_TEACHER = (
    "The teacher file is not a TorchScript module, torch.export program (.pt2), ONNX model "
    "or safetensors weights"
)


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


def load_teacher(
    path: Path, spec: TeacherSpec | str = "auto", example: torch.Tensor | None = None
) -> Teacher:
    """The teacher in `path`, frozen and in eval mode, on CPU.

    `spec` is the job's TeacherSpec or just a format name; `auto` sniffs the content.
    `example` is a batch of dataset inputs (B, *input_shape): safetensors weights need it to
    build their arch for the data's shape; other formats ignore it.
    """
    fmt, arch = (spec, None) if isinstance(spec, str) else (spec.format, spec.architecture())
    if fmt == "auto":
        fmt = sniff_format(Path(path))
    teacher = get_teacher_loader(fmt)(Path(path), arch, example)
    return teacher.eval()


def sniff_format(path: Path) -> str:
    """The registered format whose layout the file has (worker.kd.formats names it; ONNX,
    which needs a parser, is checked here), or InvalidTeacher saying what it is."""
    try:
        head = read_head(path)
    except OSError as exc:
        raise InvalidTeacher(f"The teacher file cannot be read: {shorten(exc)}") from exc
    fmt = sniff_file(path, head)
    if fmt in SNIFFED_TEACHER_FORMATS:
        return fmt
    if head.startswith(ZIP_MAGIC):
        _check_zip(path)
    elif not head.startswith(PICKLE_MAGIC) and _is_onnx(path):
        return "onnx"
    raise InvalidTeacher(f"{NOT_A_TEACHER}{looks_like(path)}. {EXPORT_HINT}")


def _check_zip(path: Path) -> None:
    try:
        zipfile.ZipFile(path).close()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidTeacher(
            f"{NOT_A_TEACHER}; it is a damaged zip archive, perhaps a truncated upload "
            f"({shorten(exc)}). {EXPORT_HINT}"
        ) from exc


def looks_like(path: Path) -> str:
    """A hint at what the file is instead, from its first bytes (never unpickled)."""
    head = _head(path, 4)
    if not head:
        return "; it is empty"
    if head.startswith(PICKLE_MAGIC):
        return "; it looks like a Python pickle (torch.save of a model or state_dict)"
    if head == ZIP_MAGIC:
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError):
            return "; it is a damaged zip archive (perhaps a truncated upload)"
        if any(name.endswith("data.pkl") for name in names):
            return (
                "; it is a zip archive, perhaps a torch.save checkpoint rather than a scripted "
                "model"
            )
        return "; it is a zip archive of other files"
    return ""


@register_teacher("hf_zip")
def _load_hf_zip(path: Path, arch: dict[str, Any] | None, example: torch.Tensor | None) -> Teacher:
    """A Hugging Face model-directory ZIP (transformers loads lazily, on first use)."""
    return load_hf_zip(path, arch, example)


def _is_onnx(path: Path) -> bool:
    """A protobuf laid out as an ONNX ModelProto (an `ir_version`, a graph with nodes and
    outputs), read tag by tag and skipping every payload: a multi-gigabyte model is sniffed
    without reading (or parsing) its weights."""
    try:
        import onnx  # noqa: F401 (ONNX support installed; else no known format)
    except ImportError:
        return False
    try:
        with open(path, "rb") as handle:
            top = _protobuf_fields(handle, path.stat().st_size)
            if 1 not in top or 7 not in top:  # ir_version, graph
                return False
            graph = top[7][0]
            handle.seek(graph[0])
            fields = _protobuf_fields(handle, graph[0] + graph[1])
    except (OSError, ValueError):
        return False
    return 1 in fields and 12 in fields  # nodes, outputs


def _protobuf_fields(handle: Any, end: int) -> dict[int, list[tuple[int, int]]]:
    """Field number -> (offset, length) of each length-delimited value (varints and fixed
    values as (offset, 0)) from the handle's position to `end`; ValueError if the bytes are
    not protobuf."""
    fields: dict[int, list[tuple[int, int]]] = {}
    while handle.tell() < end:
        tag = _varint(handle)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _varint(handle)
            span = (handle.tell(), 0)
        elif wire == 2:
            length = _varint(handle)
            span = (handle.tell(), length)
            handle.seek(length, 1)
        elif wire in (1, 5):
            span = (handle.tell(), 0)
            handle.seek(8 if wire == 1 else 4, 1)
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(number, []).append(span)
    if handle.tell() != end:
        raise ValueError("a value runs past its message")
    return fields


def _varint(handle: Any) -> int:
    value = 0
    for shift in range(0, 70, 7):
        byte = handle.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    raise ValueError("varint too long")


def _head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as exc:
        raise InvalidTeacher(f"The teacher file cannot be read: {shorten(exc)}") from exc
