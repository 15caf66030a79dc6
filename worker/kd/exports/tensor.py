"""Student files: TorchScript (`student.pt`), weights (`student.safetensors`), the
`config.json` that rebuilds the architecture, so the weights reload without pickle, and
`student.onnx`, checked against the torch student with onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from worker.kd.exports.onnx import Signature, export_checked
from worker.kd.students import STUDENT_SPEC, build_student

CONFIG_SCHEMA_VERSION = 1
SIGNATURE = Signature(inputs={"input": {0: "batch"}}, output="logits")

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
    "logits") through `exports.onnx`, run the file with onnxruntime on `example`
    (B, *input_shape), and return the largest absolute difference from the torch student's
    logits. The student ends on CPU, in eval mode."""
    student = student.cpu().eval()
    example = example.detach().cpu()
    traced = example if len(example) >= 2 else torch.cat([example, example])  # batch >= 2
    # The TorchScript-based exporter first (much faster on our students, BENCHMARKS.md);
    # the torch.export-based one takes what the former cannot.
    return export_checked(student, (traced[:2],), [(example,)], Path(path), SIGNATURE)
