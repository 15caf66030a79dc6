"""Student files: TorchScript (`student.pt`), weights (`student.safetensors`), the
`config.json` that rebuilds the architecture, so the weights reload without pickle, and
`student.onnx`, checked against the torch student with onnxruntime."""

from __future__ import annotations

import contextlib
import importlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from worker.kd.students import STUDENT_SPEC, build_student

CONFIG_SCHEMA_VERSION = 1
ONNX_INPUT, ONNX_OUTPUT = "input", "logits"

__all__ = ["STUDENT_SPEC", "export_onnx", "load_student", "save_student", "student_config"]


def save_student(
    student: nn.Module,
    config: dict[str, Any],
    out_dir: Path,
) -> dict[str, Path]:
    """Write student.pt, student.safetensors and config.json; the student ends on CPU, in eval."""
    student.cpu().eval()
    paths = {
        "student.pt": out_dir / "student.pt",
        "student.safetensors": out_dir / "student.safetensors",
        "config.json": out_dir / "config.json",
    }
    torch.jit.script(student).save(str(paths["student.pt"]))
    weights = {k: v.detach().contiguous() for k, v in student.state_dict().items()}
    save_file(weights, str(paths["student.safetensors"]))
    paths["config.json"].write_text(json.dumps(config, indent=2) + "\n")
    return paths


def student_config(spec: Any, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """Everything `load_student` needs to rebuild the architecture."""
    return {
        "schema_version": CONFIG_SCHEMA_VERSION,
        "student": spec.model_dump(mode="json"),
        "input_shape": list(input_shape),
        "num_classes": num_classes,
    }


def load_student(config_path: Path, safetensors_path: Path) -> nn.Module:
    """Rebuild a student from config.json and load its safetensors weights; eval mode, CPU."""
    config = json.loads(Path(config_path).read_text())
    if config.get("schema_version") != CONFIG_SCHEMA_VERSION:
        raise ValueError(
            f"{config_path} has schema_version {config.get('schema_version')!r}; "
            f"this version of Distillery reads {CONFIG_SCHEMA_VERSION}."
        )
    spec = STUDENT_SPEC.validate_python(config["student"])
    if spec.arch == "file":
        raise ValueError(
            f"{config_path} is for an uploaded (arch 'file') student, whose architecture lives "
            "in student.pt: load that with torch.jit.load instead."
        )
    student = build_student(spec, tuple(config["input_shape"]), int(config["num_classes"]))
    student.load_state_dict(load_file(str(safetensors_path)), strict=True)
    return student.eval()


def export_onnx(student: nn.Module, example: torch.Tensor, path: Path) -> float:
    """Write the student as ONNX with a dynamic batch dimension (input "input", output
    "logits"), run the file with onnxruntime on `example` (B, *input_shape), and return the
    largest absolute difference from the torch student's logits. The student ends on CPU, in
    eval mode."""
    student = student.cpu().eval()
    example = example.detach().cpu()
    traced = example if len(example) >= 2 else torch.cat([example, example])  # batch >= 2
    # The TorchScript-based exporter first: 8 ms against 0.7 s for the torch.export-based
    # one on our students (BENCHMARKS.md); the latter takes what the former cannot.
    try:
        _export(student, traced[:2], Path(path), dynamo=False)
    except Exception:
        if isinstance(student, torch.jit.ScriptModule):
            raise
        _export(student, traced[:2], Path(path), dynamo=True)
    ort = importlib.import_module("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: example.numpy()})
    with torch.no_grad():
        torch_logits = student(example).float().numpy()  # (B, K)
    return float(np.abs(np.asarray(onnx_logits, dtype=np.float32) - torch_logits).max())


def _export(student: nn.Module, example: torch.Tensor, path: Path, *, dynamo: bool) -> None:
    """One torch.onnx.export call; the batch dimension is dynamic in both exporters, which
    only name it differently."""
    batch: dict[str, Any] = (
        {"dynamic_shapes": ({0: torch.export.Dim("batch")},), "external_data": False}
        if dynamo
        else {"dynamic_axes": {ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}}}
    )
    with _quiet():
        torch.onnx.export(
            student,
            (example,),
            str(path),
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamo=dynamo,
            **batch,
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters warn about their own deprecations: keep the job's logs clean."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
