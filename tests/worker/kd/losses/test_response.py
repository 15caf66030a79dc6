"""Response-based losses: golden values from numpy references, and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.worker.kd.losses.reference import arr, kl, log_softmax, softmax
from worker.kd.losses import DKD, KD, HintonKDLoss, LogitMSE, LossInputs

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
LABELS = [1, 2]
T, ALPHA = 2.0, 0.6


def expected_parts() -> tuple[float, float]:
    """(T^2 * KL(p_t || p_s) averaged over the batch, mean CE), by the textbook formulas."""
    s, t = np.array(STUDENT), np.array(TEACHER)
    log_ps, log_pt = log_softmax(s / T), log_softmax(t / T)
    kl_mean = (np.exp(log_pt) * (log_pt - log_ps)).sum() / len(s)
    ce = -log_softmax(s)[np.arange(len(s)), LABELS].mean()
    return T * T * kl_mean, ce


def loss_inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    return (
        torch.tensor(STUDENT, dtype=dtype),
        torch.tensor(TEACHER, dtype=dtype),
        torch.tensor(LABELS),
    )


def random_logits(batch: int = 4, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(batch, classes, generator=g, dtype=torch.float64)  # (B, K)
    teacher = 2 * torch.randn(batch, classes, generator=g, dtype=torch.float64)  # (B, K)
    return student, teacher


# hinton: the engine's default loss


def test_hinton_golden_values_with_labels() -> None:
    kd, ce = expected_parts()
    parts = HintonKDLoss(T, ALPHA)(*loss_inputs())
    assert parts.kd.item() == pytest.approx(kd, rel=1e-6)
    assert parts.ce is not None and parts.ce.item() == pytest.approx(ce, rel=1e-6)
    assert parts.total.item() == pytest.approx(ALPHA * kd + (1 - ALPHA) * ce, rel=1e-6)
    # Pinned as well, so a change in the numpy reference cannot hide a change in the loss.
    assert parts.total.item() == pytest.approx(0.3840315044151606, rel=1e-6)


def test_hinton_without_labels_the_kd_term_takes_all_the_weight() -> None:
    student, teacher, _ = loss_inputs()
    parts = HintonKDLoss(T, ALPHA)(student, teacher, None)
    assert parts.ce is None
    assert parts.total.item() == pytest.approx(expected_parts()[0], rel=1e-6)


def test_hinton_compute_returns_the_total() -> None:
    student, teacher, labels = loss_inputs()
    loss = HintonKDLoss(T, ALPHA)
    value = loss.compute(LossInputs(student, teacher, labels))
    assert value.item() == pytest.approx(loss(student, teacher, labels).total.item())


def test_hinton_kd_term_is_zero_when_student_matches_teacher() -> None:
    _, teacher, labels = loss_inputs()
    parts = HintonKDLoss(T, ALPHA)(teacher.clone(), teacher, labels)
    assert parts.kd.item() == pytest.approx(0.0, abs=1e-7)


def test_hinton_gradients_match_finite_differences() -> None:
    student, teacher, labels = loss_inputs(torch.float64)
    loss = HintonKDLoss(T, ALPHA)
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, labels).total, (student,))
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, None).total, (student,))


# kd


def test_kd_golden_value() -> None:
    student, teacher = random_logits()
    s, t = arr(student), arr(teacher)
    expected = 3.0**2 * kl(softmax(t / 3.0), softmax(s / 3.0)) / len(s)
    assert KD(temperature=3.0)(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_kd_by_hand() -> None:
    # T = 1, one sample: p_t = (1/2, 1/2), p_s = softmax(0, ln 3) = (1/4, 3/4).
    student = torch.tensor([[0.0, float(np.log(3.0))]])
    teacher = torch.zeros(1, 2)
    expected = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    assert KD(temperature=1.0)(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_kd_rejects_a_non_positive_temperature() -> None:
    with pytest.raises(ValueError, match="temperature must be positive"):
        KD(temperature=0.0)


# dkd


def dkd_reference(
    s: np.ndarray, t: np.ndarray, y: list[int], alpha: float, beta: float, temp: float
) -> float:
    """By the paper's definitions: binary target/rest KL plus KL over the other classes."""
    tckd = nckd = 0.0
    for b, label in enumerate(y):
        ps, pt = softmax(s[b] / temp), softmax(t[b] / temp)
        bs = np.array([ps[label], 1 - ps[label]])
        bt = np.array([pt[label], 1 - pt[label]])
        tckd += kl(bt, bs)
        others = [k for k in range(len(ps)) if k != label]
        nckd += kl(softmax(t[b, others] / temp), softmax(s[b, others] / temp))
    return temp * temp * (alpha * tckd + beta * nckd) / len(y)


def test_dkd_golden_value() -> None:
    student, teacher = random_logits()
    labels = [0, 3, 4, 1]
    loss = DKD(alpha=1.5, beta=8.0, temperature=4.0)
    value = loss(student, teacher, torch.tensor(labels)).item()
    expected = dkd_reference(arr(student), arr(teacher), labels, 1.5, 8.0, 4.0)
    assert value == pytest.approx(expected, rel=1e-6)


def test_dkd_recombines_into_kd() -> None:
    """The paper's identity for one sample: KD = TCKD + (1 - p_t[y]) * NCKD."""
    student, teacher = random_logits(batch=1)
    labels = torch.tensor([2])
    p_teacher_gt = torch.softmax(teacher / 2.0, dim=-1)[0, 2].item()
    dkd = DKD(alpha=1.0, beta=1 - p_teacher_gt, temperature=2.0)(student, teacher, labels)
    assert dkd.item() == pytest.approx(KD(temperature=2.0)(student, teacher).item(), rel=1e-6)


def test_dkd_needs_labels() -> None:
    student, teacher = random_logits()
    with pytest.raises(ValueError, match="'dkd' loss needs labels"):
        DKD().compute(LossInputs(student, teacher, None))


def test_dkd_gradients_match_finite_differences() -> None:
    student, teacher = random_logits()
    labels = torch.tensor([0, 3, 4, 1])
    loss = DKD(alpha=1.0, beta=8.0, temperature=4.0)
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, labels), (student,))


# logit_mse


def test_logit_mse_golden_value() -> None:
    student, teacher = random_logits()
    expected = ((arr(student) - arr(teacher)) ** 2).mean()
    assert LogitMSE()(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_logit_mse_by_hand() -> None:
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert LogitMSE()(student, teacher).item() == pytest.approx((1 + 4 + 0 + 9) / 4)


@pytest.mark.parametrize("loss", [KD(temperature=2.0), LogitMSE()], ids=["kd", "logit_mse"])
def test_logit_losses_gradients_match_finite_differences(loss: torch.nn.Module) -> None:
    student, teacher = random_logits()
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher), (student,))
