"""Student files: ONNX with a dynamic batch that onnxruntime runs like the torch student, and
config.json + safetensors that rebuild every registry arch."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from worker.kd.exports.tensor import export_onnx, load_student, save_student, student_config
from worker.kd.spec import CNNStudent, ResNetStudent
from worker.kd.students import build_student

K = 4
SAMPLE = (3, 8, 8)
RESNET = ResNetStudent(arch="resnet", depth=8, width=4)


def trained(student: nn.Module) -> nn.Module:
    """Batch-norm statistics away from their defaults, as after training."""
    student.train()
    with torch.no_grad():
        for _ in range(3):
            student(torch.randn(8, *SAMPLE) * 3 + 1)
    return student.eval()


def onnx_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])


@pytest.mark.parametrize(
    "spec", [RESNET, CNNStudent(arch="cnn", channels=[4], hidden=8)], ids=["resnet", "cnn"]
)
def test_onnx_export_matches_torch_at_any_batch(spec: ResNetStudent, tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = trained(build_student(spec, SAMPLE, K))
    path = tmp_path / "student.onnx"
    assert export_onnx(student, torch.randn(7, *SAMPLE), path) <= 1e-4
    batch = onnx.load_model(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # symbolic: any batch size
    for size in (1, 7):
        x = torch.randn(size, *SAMPLE)
        torch.testing.assert_close(onnx_logits(path, x), student(x), atol=1e-4, rtol=0)


def test_onnx_export_of_a_torchscript_student(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh()))
    path = tmp_path / "student.onnx"
    assert export_onnx(student, torch.randn(1, 3, 4), path) <= 1e-4  # batch 1 is enough
    for size in (1, 7):
        x = torch.randn(size, 3, 4)
        torch.testing.assert_close(onnx_logits(path, x), student(x), atol=1e-4, rtol=0)


def test_resnet_round_trips_through_config_and_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = trained(build_student(RESNET, SAMPLE, K))
    paths = save_student(student, student_config(RESNET, SAMPLE, K), tmp_path)
    rebuilt = load_student(paths["config.json"], paths["student.safetensors"])
    x = torch.randn(5, *SAMPLE)
    torch.testing.assert_close(rebuilt(x), student(x), atol=0, rtol=0)
    torch.testing.assert_close(torch.jit.load(str(paths["student.pt"]))(x), student(x))


def test_file_student_config_points_at_student_pt(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "student": {"arch": "file", "file_id": "file_student"},
                "input_shape": [4],
                "num_classes": K,
            }
        )
    )
    with pytest.raises(ValueError, match=r"student\.pt"):
        load_student(config, tmp_path / "student.safetensors")
