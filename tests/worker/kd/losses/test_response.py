"""Response-based losses: golden values from numpy references, and gradients."""

from __future__ import annotations

import decimal
import math
from decimal import Decimal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


def test_a_minus_inf_teacher_logit_contributes_zero() -> None:
    """A class the teacher rules out (logit -inf, probability 0) adds nothing to KL(p_t || p_s):
    kd and hinton equal the KL over the finite classes, and the gradient T (p_s - p_t) / B
    with p_t = 0 there, where kl_div(log_target=True) gives NaN."""
    student = torch.tensor(STUDENT, requires_grad=True)  # (B, K)
    teacher = torch.tensor(TEACHER)
    teacher[0, 1] = -math.inf
    s, t = np.array(STUDENT), np.array(TEACHER)
    log_ps, log_pt = log_softmax(s / T), log_softmax(t / T)
    log_pt[0] = -np.inf
    log_pt[0, [0, 2]] = log_softmax(t[0, [0, 2]] / T)  # the softmax over its finite classes
    pt = np.exp(log_pt)
    finite = np.isfinite(log_pt)
    expected = T * T * (pt[finite] * (log_pt[finite] - log_ps[finite])).sum() / len(s)
    value = KD(temperature=T)(student, teacher)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    assert student.grad is not None
    expected_grad = T * (np.exp(log_ps) - pt) / len(s)
    np.testing.assert_allclose(student.grad.numpy(), expected_grad, rtol=1e-5, atol=1e-7)

    ce = -log_softmax(s)[np.arange(len(s)), LABELS].mean()
    parts = HintonKDLoss(T, ALPHA)(student, teacher, torch.tensor(LABELS))
    assert parts.total.item() == pytest.approx(ALPHA * expected + (1 - ALPHA) * ce, rel=1e-6)
    student.grad = None
    parts.total.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_kd_equals_kl_div_on_finite_logits() -> None:
    """On finite logits the value is kl_div(log_target=True)'s, to float precision."""
    student, teacher = random_logits()
    student, teacher = student.float(), teacher.float()
    expected = 9.0 * F.kl_div(
        F.log_softmax(student / 3.0, dim=-1),
        F.log_softmax(teacher / 3.0, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    assert KD(temperature=3.0)(student, teacher).item() == pytest.approx(expected.item(), rel=1e-6)


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


def dkd_exact(
    s: list[list[float]], t: list[list[float]], y: list[int], alpha: float, beta: float, temp: float
) -> float:
    """dkd_reference in 400-digit decimal arithmetic, where 1 - p[y] keeps its digits even
    when p[y] is within exp(-800) of 1."""
    with decimal.localcontext() as context:
        context.prec = 400

        def softmax_exact(z: list[float]) -> list[Decimal]:
            e = [(Decimal(v) / Decimal(temp)).exp() for v in z]
            return [v / sum(e) for v in e]

        def kl_exact(p: list[Decimal], q: list[Decimal]) -> Decimal:
            return sum((a * (a.ln() - b.ln()) for a, b in zip(p, q, strict=True)), Decimal(0))

        total = Decimal(0)
        for b, label in enumerate(y):
            ps, pt = softmax_exact(s[b]), softmax_exact(t[b])
            tckd = kl_exact([pt[label], 1 - pt[label]], [ps[label], 1 - ps[label]])
            others = [k for k in range(len(s[b])) if k != label]
            qs = softmax_exact([s[b][k] for k in others])
            qt = softmax_exact([t[b][k] for k in others])
            total += Decimal(alpha) * tckd + Decimal(beta) * kl_exact(qt, qs)
        return float(Decimal(temp) ** 2 * total / len(y))


def dkd_mdistiller(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temp: float
) -> torch.Tensor:
    """(TCKD, NCKD) as the official mdistiller code computes them: in probabilities, with
    the target masked out by subtracting 1000."""
    gt = F.one_hot(labels, student.shape[-1]).to(student.dtype)  # (B, K)
    p_s, p_t = F.softmax(student / temp, dim=-1), F.softmax(teacher / temp, dim=-1)  # (B, K)
    b_s = torch.stack([(p_s * gt).sum(-1), (p_s * (1 - gt)).sum(-1)], dim=-1)  # (B, 2)
    b_t = torch.stack([(p_t * gt).sum(-1), (p_t * (1 - gt)).sum(-1)], dim=-1)  # (B, 2)
    scale = temp * temp / student.shape[0]
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * scale
    log_q_s = F.log_softmax(student / temp - 1000.0 * gt, dim=-1)  # (B, K)
    q_t = F.softmax(teacher / temp - 1000.0 * gt, dim=-1)  # (B, K)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * scale
    return torch.stack([tckd, nckd])


def test_dkd_equals_the_mdistiller_formula_on_moderate_logits() -> None:
    student, teacher = random_logits()
    student, teacher = 3 * student.float(), 3 * teacher.float()
    labels = torch.tensor([0, 3, 4, 1])
    tckd, nckd = dkd_mdistiller(student, teacher, labels, 4.0)
    assert DKD(alpha=1.0, beta=0.0, temperature=4.0)(student, teacher, labels).item() == (
        pytest.approx(tckd.item(), rel=1e-6)
    )
    assert DKD(alpha=0.0, beta=1.0, temperature=4.0)(student, teacher, labels).item() == (
        pytest.approx(nckd.item(), rel=1e-6)
    )


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dkd_stays_finite_and_exact_at_a_target_logit_of_800(temp: float) -> None:
    """Once p_s[y] rounds to 1, mdistiller's log(1 - p_s[y]) is log 0; in log space the loss
    keeps its exact value and a gradient."""
    s = [[800.0, 0.0, 1.0, -1.0], [0.5, 2.0, -800.0, 1.0]]
    t = [[5.0, 1.0, 0.0, 2.0], [800.0, 0.0, 3.0, -2.0]]
    labels = [0, 2]
    student = torch.tensor(s, requires_grad=True)  # (B, K)
    teacher, y = torch.tensor(t), torch.tensor(labels)
    assert not torch.isfinite(dkd_mdistiller(student, teacher, y, temp)).all()

    value = DKD(alpha=1.0, beta=8.0, temperature=temp)(student, teacher, y)
    assert value.item() == pytest.approx(dkd_exact(s, t, labels, 1.0, 8.0, temp), rel=1e-5)
    value.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    loss64 = DKD(alpha=1.0, beta=8.0, temperature=temp)
    student64 = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    teacher64 = teacher.double()
    assert torch.autograd.gradcheck(lambda z: loss64(z, teacher64, y), (student64,))


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
