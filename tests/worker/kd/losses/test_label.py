"""The label loss: cross-entropy against the dataset's labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.worker.kd.losses.reference import arr, log_softmax
from worker.kd.losses import CrossEntropy, LossInputs

LOGITS = [[2.0, 0.0, 1.0], [0.5, 1.5, -1.0]]
LABELS = [0, 2]


def test_ce_golden_value() -> None:
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    expected = -log_softmax(arr(logits))[np.arange(2), LABELS].mean()
    assert CrossEntropy()(logits, torch.tensor(LABELS)).item() == pytest.approx(expected, rel=1e-6)


def test_ce_by_hand() -> None:
    # Two classes, logits (0, ln 3): p = (1/4, 3/4); label 1 costs -ln(3/4).
    logits = torch.tensor([[0.0, float(np.log(3.0))]])
    assert CrossEntropy()(logits, torch.tensor([1])).item() == pytest.approx(-np.log(0.75))


def test_ce_with_label_smoothing() -> None:
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    eps, classes = 0.1, 3
    log_p = log_softmax(arr(logits))
    target = np.full((2, classes), eps / classes)
    target[np.arange(2), LABELS] += 1 - eps
    expected = -(target * log_p).sum(axis=1).mean()
    value = CrossEntropy(label_smoothing=eps)(logits, torch.tensor(LABELS)).item()
    assert value == pytest.approx(expected, rel=1e-6)


def test_ce_compute_needs_labels() -> None:
    logits = torch.tensor(LOGITS)
    assert CrossEntropy().compute(LossInputs(logits, logits, torch.tensor(LABELS))).ndim == 0
    with pytest.raises(ValueError, match="'ce' loss needs labels"):
        CrossEntropy().compute(LossInputs(logits, logits, None))


def test_ce_gradients_match_finite_differences() -> None:
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor(LABELS)
    assert torch.autograd.gradcheck(lambda s: CrossEntropy(0.1)(s, labels), (logits,))
