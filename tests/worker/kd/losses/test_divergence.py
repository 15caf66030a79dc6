"""reverse_kl and GKD's generalized JSD against numpy references; masks respected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.worker.kd.losses.reference import arr, softmax
from worker.kd.catalogue import LOSS_CATALOGUE
from worker.kd.losses import GeneralizedJSD, ReverseKL, generalized_jsd, get_loss, reverse_kl


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row (..., V) -> (...)."""
    return (p * (np.log(p) - np.log(q))).sum(axis=-1)


def jsd_reference(s: np.ndarray, t: np.ndarray, beta: float, temperature: float) -> float:
    """GKD's formula, written out: M = beta p + (1 - beta) q."""
    q, p = softmax(s / temperature), softmax(t / temperature)
    m = beta * p + (1 - beta) * q
    return float((beta * kl_rows(p, m) + (1 - beta) * kl_rows(q, m)).mean())


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, 11, generator=generator, dtype=torch.float64)  # (N, V)
    teacher = 2.0 * torch.randn(6, 11, generator=generator, dtype=torch.float64)
    return student, teacher


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_reverse_kl_is_kl_of_the_student_from_the_teacher(logits, temperature) -> None:
    s, t = logits
    expected = kl_rows(softmax(arr(s) / temperature), softmax(arr(t) / temperature)).mean()
    assert ReverseKL(temperature)(s, t).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_matches_the_gkd_formula(logits, beta, temperature) -> None:
    s, t = logits
    value = GeneralizedJSD(beta, temperature)(s, t).item()
    assert value == pytest.approx(jsd_reference(arr(s), arr(t), beta, temperature), rel=1e-10)


def test_jsd_ends_are_forward_and_reverse_kl(logits) -> None:
    s, t = logits
    q, p = softmax(arr(s)), softmax(arr(t))
    assert generalized_jsd(s, t, 0.0).item() == pytest.approx(kl_rows(p, q).mean(), rel=1e-10)
    assert generalized_jsd(s, t, 1.0).item() == pytest.approx(kl_rows(q, p).mean(), rel=1e-10)
    assert generalized_jsd(s, t, 1.0).item() == pytest.approx(reverse_kl(s, t).item(), rel=1e-12)


def test_jsd_is_zero_for_equal_distributions_and_symmetric_at_one_half(logits) -> None:
    s, t = logits
    assert generalized_jsd(s, s, 0.5).item() == pytest.approx(0.0, abs=1e-12)
    assert generalized_jsd(s, t, 0.5).item() == pytest.approx(generalized_jsd(t, s, 0.5).item())


def test_the_mask_counts_only_marked_tokens() -> None:
    """Padded (B, T, V) logits with a mask: the masked-out positions, whatever their
    logits, change neither the value nor get any gradient."""
    generator = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, 7, generator=generator, requires_grad=True)
    t = torch.randn(2, 4, 7, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    rows = mask.bool()
    for fn in (lambda a, b, m=None: generalized_jsd(a, b, 0.3, mask=m),
               lambda a, b, m=None: reverse_kl(a, b, mask=m)):  # fmt: skip
        masked = fn(s, t, mask)
        assert masked.item() == pytest.approx(fn(s[rows], t[rows]).item(), rel=1e-6)
        garbage = s.detach().clone()
        garbage[~rows] = 1e3
        assert fn(garbage, t, mask).item() == pytest.approx(masked.item(), rel=1e-6)
        (grad,) = torch.autograd.grad(masked, s)
        assert grad[~rows].abs().max().item() == 0.0
        assert grad[rows].abs().max().item() > 0.0


def test_a_teacher_zero_is_finite(logits) -> None:
    s, t = logits
    t = t.clone()
    t[:, 0] = -torch.inf  # a token the teacher rules out (reverse KL is then infinite)
    for beta in (0.0, 0.5, 0.99):
        assert torch.isfinite(generalized_jsd(s, t, beta))


def test_registered_for_causal_lm_only_with_checked_params() -> None:
    for name in ("reverse_kl", "jsd"):
        assert LOSS_CATALOGUE[name].task_kinds == ("causal_lm",)
    with pytest.raises(ValueError, match="beta"):
        get_loss("jsd", beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        get_loss("reverse_kl", temperature=0.0)
