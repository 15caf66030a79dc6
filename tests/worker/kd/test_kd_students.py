"""Students: every arch builds for every input rank it accepts, scripts, and gives (B, K)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from worker.kd.errors import IncompatibleModels, InvalidSpec
from worker.kd.exports.tensor import save_student
from worker.kd.spec import CNNStudent, FileStudent, MLPStudent, ResNetStudent
from worker.kd.students import build_student, cnn_layout, get_student, load_file_student
from worker.kd.training.features import describe_layers

K = 5
MLP = MLPStudent(arch="mlp", hidden=[16, 8], dropout=0.1)
CNN = CNNStudent(arch="cnn", channels=[4, 8], kernel_size=3, hidden=16, dropout=0.1)
SHAPES = [(1,), (20,), (3, 40), (8, 8), (28, 20), (3, 8, 8), (2, 1, 1)]


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("input_shape", SHAPES, ids=str)
def test_student_scripts_and_maps_inputs_to_logits(
    spec: MLPStudent | CNNStudent, input_shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    student = build_student(spec, input_shape, K).eval()
    scripted = torch.jit.script(student)
    x = torch.randn(3, *input_shape)  # (B, *input_shape)
    out = scripted(x)
    assert out.shape == (3, K)
    assert torch.allclose(out, student(x), atol=1e-6)


def test_students_train_on_a_batch_of_two() -> None:
    student = build_student(CNN, (3, 8, 8), K).train()
    student(torch.randn(2, 3, 8, 8)).sum().backward()


@pytest.mark.parametrize(
    ("input_shape", "layout", "dims", "channels_first"),
    [
        ((64,), "auto", 1, (1, 64)),
        ((3, 100), "auto", 1, (3, 100)),
        ((8, 8), "auto", 1, (8, 8)),
        ((8, 8), "2d", 2, (1, 8, 8)),
        ((64, 100), "2d", 2, (1, 64, 100)),
        ((3, 32, 32), "auto", 2, (3, 32, 32)),
    ],
)
def test_cnn_layout_follows_rank_unless_told(
    input_shape: tuple[int, ...], layout: str, dims: int, channels_first: tuple[int, ...]
) -> None:
    assert cnn_layout(input_shape, layout)[:2] == (dims, channels_first)


def test_cnn_layout_refuses_what_it_cannot_read() -> None:
    with pytest.raises(IncompatibleModels, match="layout '1d'"):
        cnn_layout((3, 8, 8), "1d")


def test_cnn_refuses_rank_four_inputs() -> None:
    with pytest.raises(IncompatibleModels, match=r"shape \(2, 3, 8, 8\).*arch 'mlp'"):
        build_student(CNN, (2, 3, 8, 8), K)


def test_mlp_flattens_any_rank() -> None:
    assert build_student(MLP, (2, 3, 4, 5), K)(torch.randn(2, 2, 3, 4, 5)).shape == (2, K)


def test_registry_lists_known_archs() -> None:
    with pytest.raises(ValueError, match="known archs: cnn, file, mlp, resnet"):
        get_student("vit")


def train_step(student: nn.Module, x: torch.Tensor) -> None:
    """One SGD step on cross-entropy; every trainable parameter must move."""
    student.train()
    before = [p.detach().clone() for p in student.parameters()]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(student(x), torch.arange(len(x)) % K)
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, student.parameters(), strict=True))


@pytest.mark.parametrize("depth", [8, 14])
def test_resnet_builds_scripts_and_trains(depth: int) -> None:
    torch.manual_seed(0)
    student = build_student(ResNetStudent(arch="resnet", depth=depth, width=4), (3, 12, 10), K)
    convs = [m for m in student.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # the stem, two per block, and the linear head: 6n+2
    x = torch.randn(4, 3, 12, 10)  # (B, C, H, W)
    student.eval()
    torch.testing.assert_close(torch.jit.script(student)(x), student(x), atol=1e-6, rtol=0)
    train_step(student, x)


def test_resnet_layers_are_named_by_stage() -> None:
    student = build_student(ResNetStudent(arch="resnet", depth=8, width=4), (1, 8, 8), K)
    shapes = dict(describe_layers(student, torch.randn(2, 1, 8, 8)))
    assert shapes["stem"] == (4, 8, 8)
    assert shapes["layer1"] == (4, 8, 8)
    assert shapes["layer2"] == (8, 4, 4)
    assert shapes["layer3"] == (16, 2, 2)
    assert shapes["fc"] == (K,)


def test_resnet_builds_on_the_meta_device() -> None:
    with torch.device("meta"):
        student = build_student(ResNetStudent(arch="resnet", depth=20, width=16), (3, 32, 32), K)
        assert student(torch.empty(2, 3, 32, 32)).shape == (2, K)


@pytest.mark.parametrize("input_shape", [(64,), (3, 40), (2, 3, 8, 8)], ids=str)
def test_resnet_reads_images_only(input_shape: tuple[int, ...]) -> None:
    with pytest.raises(IncompatibleModels, match=r"resnet student reads images \(C, H, W\)"):
        build_student(ResNetStudent(arch="resnet"), input_shape, K)


def scripted_student(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "student.pt"
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, K))
    torch.jit.script(model).save(str(path))
    return path


def test_file_student_loads_trains_and_saves(tmp_path: Path) -> None:
    x = torch.randn(4, 3, 4)
    student = load_file_student(scripted_student(tmp_path), x, K)
    assert student.training
    assert all(p.requires_grad for p in student.parameters())
    train_step(student, x)
    assert torch.jit.script(student) is student  # already TorchScript: student.pt as it is
    config = {"student": {"arch": "file", "file_id": "file_student"}}
    paths = save_student(student, config, tmp_path)
    reloaded = torch.jit.load(str(paths["student.pt"]))
    torch.testing.assert_close(reloaded(x), student(x))


def test_file_student_must_fit_the_data_and_teacher(tmp_path: Path) -> None:
    path = scripted_student(tmp_path)
    with pytest.raises(IncompatibleModels, match=r"returned \(4, 5\).*logits \(4, 3\)"):
        load_file_student(path, torch.randn(4, 12), 3)
    with pytest.raises(IncompatibleModels, match=r"failed on dataset inputs of shape \(4, 7\)"):
        load_file_student(path, torch.randn(4, 7), K)


def test_file_student_must_be_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "student.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(InvalidSpec, match=r"not a TorchScript module.*torch\.jit\.script"):
        load_file_student(path)


def test_file_students_are_not_built_from_the_spec() -> None:
    with pytest.raises(InvalidSpec, match="load_file_student"):
        build_student(FileStudent(arch="file", file_id="file_student"), (4,), K)


def test_spec_lists_every_registered_loss() -> None:
    from worker.kd.catalogue import LOSS_CATALOGUE, LOSS_KINDS
    from worker.kd.losses import LOSSES, loss_info

    LAYER_LOSSES = [name for name, meta in LOSS_CATALOGUE.items() if meta.needs_layers]

    assert set(LOSS_KINDS) == set(LOSSES)
    assert {name for name in LOSSES if loss_info(name).needs_layers} == set(LAYER_LOSSES)
