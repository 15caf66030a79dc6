"""Relation-based losses: RKD distance and angle, similarity-preserving, PKT."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.worker.kd.losses.reference import arr, huber, unit
from worker.kd.losses import PKT, RKDAngle, RKDDistance, SimilarityPreserving


def features(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 4: student (4, 2, 3), flattened to width 6; teacher (4, 5)."""
    return features(4, 2, 3), features(4, 5, seed=1)


def flat(x: torch.Tensor) -> np.ndarray:
    return arr(x).reshape(len(x), -1)


def distance_psi(e: np.ndarray) -> np.ndarray:
    """Pairwise distances over their mean over the pairs i != j."""
    b = len(e)
    d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(b)] for i in range(b)])
    mean = sum(d[i, j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
    return d / mean


def rkd_distance_reference(s: np.ndarray, t: np.ndarray) -> float:
    return float(huber(distance_psi(s) - distance_psi(t)).mean())


def rkd_angle_reference(s: np.ndarray, t: np.ndarray) -> float:
    def psi(e: np.ndarray) -> np.ndarray:
        b = len(e)
        angles = np.zeros((b, b, b))
        for i, j, k in itertools.product(range(b), repeat=3):
            angles[i, j, k] = unit(e[j] - e[i]) @ unit(e[k] - e[i])
        return angles

    return float(huber(psi(s) - psi(t)).mean())


def sp_reference(s: np.ndarray, t: np.ndarray) -> float:
    def g(f: np.ndarray) -> np.ndarray:
        gram = f @ f.T
        return gram / np.linalg.norm(gram, axis=1, keepdims=True)

    return float(((g(t) - g(s)) ** 2).sum() / len(s) ** 2)


def pkt_reference(s: np.ndarray, t: np.ndarray, eps: float = 1e-7) -> float:
    def p(f: np.ndarray) -> np.ndarray:
        b = len(f)
        k = np.array([[(1 + unit(f[i]) @ unit(f[j])) / 2 for j in range(b)] for i in range(b)])
        return k / k.sum(axis=1, keepdims=True)

    ps, pt = p(s), p(t)
    return float((pt * np.log((pt + eps) / (ps + eps))).mean())


def test_rkd_distance_golden_value() -> None:
    student, teacher = pair()
    expected = rkd_distance_reference(flat(student), flat(teacher))
    assert RKDDistance()(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_rkd_distance_reaches_the_huber_linear_part() -> None:
    # One far outlier makes some normalised distances differ by more than 1.
    student = features(5, 3)
    teacher = features(5, 3, seed=1)
    teacher[0] += 20
    assert np.abs(distance_psi(flat(student)) - distance_psi(flat(teacher))).max() > 1
    expected = rkd_distance_reference(flat(student), flat(teacher))
    assert RKDDistance()(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_rkd_distance_ignores_scale() -> None:
    student = features(4, 3)
    assert RKDDistance()(student, 7 * student).item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_angle_golden_value() -> None:
    student, teacher = pair()
    expected = rkd_angle_reference(flat(student), flat(teacher))
    assert RKDAngle()(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_sp_golden_value() -> None:
    student, teacher = pair()
    expected = sp_reference(flat(student), flat(teacher))
    assert SimilarityPreserving()(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_sp_by_hand() -> None:
    # Student rows e1, e2: G_s = I. Teacher rows (1, 0), (1, 1): Gram [[1, 1], [1, 2]],
    # normalised rows [[1, 1] / sqrt 2, [1, 2] / sqrt 5].
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    r2, r5 = np.sqrt(2), np.sqrt(5)
    diff = [1 / r2 - 1, 1 / r2, 1 / r5, 2 / r5 - 1]
    expected = sum(x * x for x in diff) / 4
    assert SimilarityPreserving()(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_pkt_golden_value() -> None:
    student, teacher = pair()
    expected = pkt_reference(flat(student), flat(teacher))
    assert PKT()(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_pkt_is_zero_for_the_same_directions() -> None:
    student = features(4, 3)
    assert PKT()(student, 2 * student).item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "loss",
    [RKDDistance(), RKDAngle(), SimilarityPreserving(), PKT()],
    ids=["rkd_distance", "rkd_angle", "sp", "pkt"],
)
def test_relation_gradients_match_finite_differences(loss: torch.nn.Module) -> None:
    student, teacher = features(4, 3), features(4, 5, seed=1)
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher), (student,))


def test_rkd_distance_gradients_in_the_huber_linear_part() -> None:
    student, teacher = features(5, 3), features(5, 3, seed=1)
    teacher[0] += 20
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: RKDDistance()(s, teacher), (student,))


def test_relation_losses_have_finite_gradients_with_repeated_samples() -> None:
    """Zero distances (a sample twice in the batch) must not poison the gradient with NaN."""
    student = features(3, 4)
    student = torch.cat([student, student[:1]]).requires_grad_(True)  # (4, 4), rows 0 and 3 equal
    teacher = features(4, 4, seed=1)
    for loss in (RKDDistance(), RKDAngle(), SimilarityPreserving(), PKT()):
        (grad,) = torch.autograd.grad(loss(student, teacher), student)
        assert torch.isfinite(grad).all(), loss.key
