"""Feature-based losses: hint (FitNets), attention transfer, hidden-state cosine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.worker.kd.losses.reference import adaptive_avg_pool, arr
from worker.kd.losses import Attention, Cosine, Hint, LossInputs


def features(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def set_adapter(adapter: nn.Module, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Give a Linear or 1x1 conv known weights; returns them as (out, in) and (out,) arrays."""
    assert isinstance(adapter, nn.Linear | nn.Conv1d | nn.Conv2d)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        adapter.weight.copy_(torch.randn(adapter.weight.shape, generator=g))
        assert adapter.bias is not None
        adapter.bias.copy_(torch.randn(adapter.bias.shape, generator=g))
        bias = adapter.bias.double().numpy()
    return adapter.weight.detach().double().numpy().reshape(len(bias), -1), bias


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a - b) ** 2).mean())


# hint


def test_hint_linear_golden_value() -> None:
    student, teacher = features(3, 4), features(3, 2, seed=1)  # (B, D_s), (B, D_t)
    loss = Hint((4,), (2,)).double()
    w, b = set_adapter(loss.adapter, seed=2)
    expected = mse(arr(student) @ w.T + b, arr(teacher))
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_hint_conv2d_pools_the_larger_student_map() -> None:
    student, teacher = features(2, 3, 4, 4), features(2, 5, 2, 2, seed=1)
    loss = Hint((3, 4, 4), (5, 2, 2)).double()
    assert isinstance(loss.adapter, nn.Conv2d) and loss.adapter.kernel_size == (1, 1)
    w, b = set_adapter(loss.adapter, seed=2)
    pooled = arr(student).reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))  # 2x2 blocks
    mapped = np.einsum("oc,bchw->bohw", w, pooled) + b[None, :, None, None]
    assert loss(student, teacher).item() == pytest.approx(mse(mapped, arr(teacher)), rel=1e-6)


def test_hint_conv2d_pools_the_larger_teacher_map() -> None:
    student, teacher = features(2, 3, 2, 2), features(2, 4, 4, 4, seed=1)
    loss = Hint((3, 2, 2), (4, 4, 4)).double()
    w, b = set_adapter(loss.adapter, seed=2)
    mapped = np.einsum("oc,bchw->bohw", w, arr(student)) + b[None, :, None, None]
    pooled = arr(teacher).reshape(2, 4, 2, 2, 2, 2).mean(axis=(3, 5))
    assert loss(student, teacher).item() == pytest.approx(mse(mapped, pooled), rel=1e-6)


def test_hint_conv1d_with_uneven_pooling() -> None:
    student, teacher = features(2, 3, 5), features(2, 2, 3, seed=1)  # (B, C, L)
    loss = Hint((3, 5), (2, 3)).double()
    assert isinstance(loss.adapter, nn.Conv1d)
    w, b = set_adapter(loss.adapter, seed=2)
    s = arr(student)
    # Bins of 5 into 3 overlap: [0, 2), [1, 4), [3, 5).
    pooled = np.stack([s[..., 0:2].mean(-1), s[..., 1:4].mean(-1), s[..., 3:5].mean(-1)], -1)
    np.testing.assert_allclose(pooled, adaptive_avg_pool(s, (3,)))
    mapped = np.einsum("oc,bcl->bol", w, pooled) + b[None, :, None]
    assert loss(student, teacher).item() == pytest.approx(mse(mapped, arr(teacher)), rel=1e-6)


def test_hint_flattens_student_maps_onto_a_teacher_vector() -> None:
    student, teacher = features(2, 2, 3, 3), features(2, 5, seed=1)
    loss = Hint((2, 3, 3), (5,)).double()
    assert isinstance(loss.adapter, nn.Linear) and loss.adapter.in_features == 18
    w, b = set_adapter(loss.adapter, seed=2)
    expected = mse(arr(student).reshape(2, -1) @ w.T + b, arr(teacher))
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("student", "teacher"),
    [((4,), (2, 3, 3)), ((3, 8), (2, 4, 4)), ((3, 4, 4), (2, 4)), ((1, 2, 2, 2), (1, 2, 2, 2))],
)
def test_hint_shape_mismatch_names_both_shapes(
    student: tuple[int, ...], teacher: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError) as err:
        Hint(student, teacher)
    message = str(err.value)
    assert f"student features of shape {student}" in message
    assert f"teacher features of shape {teacher}" in message


def test_hint_rejects_tensors_of_other_shapes_than_it_was_built_for() -> None:
    loss = Hint((3, 4, 4), (5, 2, 2))
    with pytest.raises(ValueError, match=r"built for student features \(3, 4, 4\)"):
        loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 5, 2, 2))


def test_hint_gradients_match_finite_differences() -> None:
    student, teacher = features(2, 3, 4, 4), features(2, 2, 2, 2, seed=1)
    loss = Hint((3, 4, 4), (2, 2, 2)).double()
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher), (student,))


# attention


def attention_reference(s: np.ndarray, t: np.ndarray) -> float:
    def q(f: np.ndarray) -> np.ndarray:
        a = (f**2).mean(axis=1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return float(((q(s) - q(t)) ** 2).mean())


def test_attention_golden_value_pools_to_the_smaller_map() -> None:
    student, teacher = features(2, 3, 4, 4), features(2, 5, 2, 2, seed=1)
    pooled = arr(student).reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))
    expected = attention_reference(pooled, arr(teacher))
    assert Attention()(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_attention_golden_value_on_sequences() -> None:
    student, teacher = features(3, 4, 6), features(3, 2, 6, seed=1)  # (B, C, L)
    expected = attention_reference(arr(student), arr(teacher))
    assert Attention()(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_attention_needs_spatial_features_of_one_rank() -> None:
    with pytest.raises(ValueError, match=r"shape \(8,\).*shape \(8,\)"):
        Attention.check_shapes((8,), (8,))
    with pytest.raises(ValueError, match=r"shape \(3, 4\).*shape \(3, 4, 4\)"):
        Attention()(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, 4))


def test_attention_gradients_match_finite_differences() -> None:
    student, teacher = features(2, 3, 4, 4), features(2, 2, 2, 2, seed=1)
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: Attention()(s, teacher), (student,))


# cosine


def cosine_reference(s: np.ndarray, t: np.ndarray) -> float:
    cos = (s * t).sum(-1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))
    return float((1 - cos).mean())


def test_cosine_golden_value_with_an_adapter() -> None:
    student, teacher = features(2, 3, 4), features(2, 3, 5, seed=1)  # (B, L, D)
    loss = Cosine((3, 4), (3, 5)).double()
    w, b = set_adapter(loss.adapter, seed=2)
    expected = cosine_reference(arr(student) @ w.T + b, arr(teacher))
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_cosine_of_equal_widths_has_no_adapter() -> None:
    student, teacher = features(4, 6), features(4, 6, seed=1)
    loss = Cosine((6,), (6,))
    assert list(loss.parameters()) == []
    expected = cosine_reference(arr(student), arr(teacher))
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert loss(student, 3 * student).item() == pytest.approx(0.0, abs=1e-7)


def test_cosine_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"shape \(3, 4\) .*shape \(5, 4\)"):
        Cosine((3, 4), (5, 4))


def test_cosine_gradients_match_finite_differences() -> None:
    student, teacher = features(2, 3, 4), features(2, 3, 5, seed=1)
    loss = Cosine((3, 4), (3, 5)).double()
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher), (student,))


def test_layer_losses_need_features_from_both_models() -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="'attention' loss compares intermediate layers"):
        Attention().compute(LossInputs(logits, logits, None, torch.zeros(2, 3, 4), None))
    with pytest.raises(ValueError, match="2 student and 3 teacher samples"):
        Attention().compute(
            LossInputs(logits, logits, None, torch.ones(2, 3, 4), torch.ones(3, 3, 4))
        )
