"""The Hinton KD loss: golden values computed independently with numpy, and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.kd.losses import HintonKDLoss, get_loss

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
LABELS = [1, 2]
T, ALPHA = 2.0, 0.6


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def expected_parts() -> tuple[float, float]:
    """(T^2 * KL(p_t || p_s) averaged over the batch, mean CE), by the textbook formulas."""
    s, t = np.array(STUDENT), np.array(TEACHER)
    log_ps, log_pt = np_log_softmax(s / T), np_log_softmax(t / T)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum() / len(s)
    ce = -np_log_softmax(s)[np.arange(len(s)), LABELS].mean()
    return T * T * kl, ce


def loss_inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    return (
        torch.tensor(STUDENT, dtype=dtype),
        torch.tensor(TEACHER, dtype=dtype),
        torch.tensor(LABELS),
    )


def test_golden_values_with_labels() -> None:
    kd, ce = expected_parts()
    parts = HintonKDLoss(T, ALPHA)(*loss_inputs())
    assert parts.kd.item() == pytest.approx(kd, rel=1e-6)
    assert parts.ce is not None and parts.ce.item() == pytest.approx(ce, rel=1e-6)
    assert parts.total.item() == pytest.approx(ALPHA * kd + (1 - ALPHA) * ce, rel=1e-6)
    # Pinned as well, so a change in the numpy reference cannot hide a change in the loss.
    assert parts.total.item() == pytest.approx(0.3840315044151606, rel=1e-6)


def test_without_labels_the_kd_term_takes_all_the_weight() -> None:
    student, teacher, _ = loss_inputs()
    parts = HintonKDLoss(T, ALPHA)(student, teacher, None)
    assert parts.ce is None
    assert parts.total.item() == pytest.approx(expected_parts()[0], rel=1e-6)


def test_kd_term_is_zero_when_student_matches_teacher() -> None:
    _, teacher, labels = loss_inputs()
    parts = HintonKDLoss(T, ALPHA)(teacher.clone(), teacher, labels)
    assert parts.kd.item() == pytest.approx(0.0, abs=1e-7)


def test_gradients_match_finite_differences() -> None:
    student, teacher, labels = loss_inputs(torch.float64)
    loss = HintonKDLoss(T, ALPHA)
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, labels).total, (student,))
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, None).total, (student,))


def test_registry_names_known_losses() -> None:
    assert isinstance(get_loss("hinton", temperature=1.0, alpha=0.5), HintonKDLoss)
    with pytest.raises(ValueError, match="known losses: hinton"):
        get_loss("nope")
