"""Students: every arch builds for every input rank it accepts, scripts, and gives (B, K)."""

from __future__ import annotations

import pytest
import torch

from worker.kd.errors import IncompatibleModels
from worker.kd.spec import CNNStudent, MLPStudent
from worker.kd.students import build_student, cnn_layout, get_student

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
    with pytest.raises(ValueError, match="known archs: cnn, mlp"):
        get_student("resnet")


def test_spec_lists_every_registered_loss() -> None:
    from worker.kd.losses import LOSSES, loss_info
    from worker.kd.spec import LAYER_LOSSES, LOSS_KINDS

    assert set(LOSS_KINDS) == set(LOSSES)
    assert {name for name in LOSSES if loss_info(name).needs_layers} == set(LAYER_LOSSES)
