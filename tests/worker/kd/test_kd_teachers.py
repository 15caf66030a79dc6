"""Teacher loading and probing: anything but a working TorchScript logits model is refused."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from worker.kd.engine import prepare
from worker.kd.errors import InvalidTeacher
from worker.kd.spec import JobSpec
from worker.kd.teachers import get_teacher_loader, load_teacher, probe_teacher

EXPORT_HINT = r"torch\.jit\.script\(model\)\.save"


def write_bytes(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "teacher.pt"
    path.write_bytes(content)
    return path


def scripted(tmp_path: Path, module: nn.Module) -> Path:
    path = tmp_path / "teacher.pt"
    torch.jit.script(module).save(str(path))
    return path


class ReturnsTuple(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class ReturnsVector(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1)  # (B,)


class ReturnsIntegers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :10].long()  # (B, 10)


def test_pickle_file_is_refused_without_being_loaded(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(InvalidTeacher, match=rf"not a TorchScript module.*pickle.*{EXPORT_HINT}"):
        load_teacher(path)


def test_garbage_bytes_are_refused(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b"\x00garbage" * 100)
    with pytest.raises(InvalidTeacher, match="not a TorchScript module") as caught:
        load_teacher(path)
    assert caught.value.code == "invalid_teacher"
    assert len(caught.value.message) < 600


def test_torch_save_checkpoint_is_not_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    torch.save(nn.Linear(64, 10).state_dict(), path)
    with pytest.raises(InvalidTeacher, match=r"zip archive, perhaps a torch\.save checkpoint"):
        load_teacher(path)


def test_teacher_that_fails_on_dataset_inputs(
    tmp_path: Path, digits_npz: Path, make_spec: Callable[..., JobSpec]
) -> None:
    path = scripted(tmp_path, nn.Linear(32, 10))
    with pytest.raises(InvalidTeacher, match=r"failed on a batch of 2 .* shape \(2, 64\)"):
        prepare(make_spec(), path, digits_npz)


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (ReturnsTuple(), "returned a tuple"),
        (ReturnsVector(), r"returned shape \(2,\)"),
        (ReturnsIntegers(), "returned dtype torch.int64"),
    ],
)
def test_teacher_must_return_float_logits(module: nn.Module, match: str, tmp_path: Path) -> None:
    teacher = load_teacher(scripted(tmp_path, module))
    with pytest.raises(InvalidTeacher, match=match):
        probe_teacher(teacher, torch.randn(2, 64))


def test_probe_returns_class_count(teacher_path: Path) -> None:
    assert probe_teacher(load_teacher(teacher_path), torch.randn(2, 64)) == 10


def test_unknown_teacher_format_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known formats: torchscript"):
        get_teacher_loader("onnx")
