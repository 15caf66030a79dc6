"""Transformer losses: attention KL in log space, and the dtype they compute in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.worker.kd.losses.reference import arr, log_softmax, softmax
from worker.kd.losses import AttentionKL, EmbeddingMSE, HiddenCosine, SoftTargetCE
from worker.kd.losses.transformer import attention_log_probs

# One query row, one head, three keys: the student's scores put the middle key 200 below
# the others, so its softmax probability (exp(-200) / 2) underflows to 0 in float32.
UNDERFLOWING_SCORES = [[[0.0, -200.0, 0.0]]]  # (N=1, heads=1, keys=3)
TEACHER_ATTENTION = [[[0.25, 0.5, 0.25]]]


def attention_kl_reference(log_a_student: np.ndarray, a_teacher: np.ndarray) -> float:
    """mean over rows and heads of sum_j a_t[j] (log a_t[j] - log a_s[j]), 0 where a_t = 0."""
    terms = np.where(a_teacher > 0, a_teacher * (np.log(a_teacher) - log_a_student), 0.0)
    return float(terms.sum(axis=-1).mean())


def test_self_attention_kl_pulls_up_attention_the_student_has_underflowed() -> None:
    scores = torch.tensor(UNDERFLOWING_SCORES, requires_grad=True)
    teacher = torch.tensor(TEACHER_ATTENTION)
    assert torch.softmax(scores, dim=-1)[0, 0, 1].item() == 0.0  # underflowed in float32
    value = AttentionKL()(scores, teacher)
    s, t = np.array(UNDERFLOWING_SCORES), np.array(TEACHER_ATTENTION)
    assert value.item() == pytest.approx(attention_kl_reference(log_softmax(s), t), rel=1e-6)
    value.backward()
    assert scores.grad is not None
    # d/d scores = a_s - a_t: the underflowed key is pushed up by the teacher's 0.5.
    np.testing.assert_allclose(scores.grad.numpy(), softmax(s) - t, atol=1e-7)
    assert scores.grad[0, 0, 1].item() == pytest.approx(-0.5)


def test_attention_log_probs_passes_the_gradient_below_the_old_epsilon() -> None:
    """From probabilities (what a transformer returns), a key at exp(-45), far below the
    1e-12 that used to clamp it, still gets its gradient a_s - a_t."""
    scores = torch.tensor([[[0.0, -45.0, 0.0]]], requires_grad=True)
    teacher = torch.tensor(TEACHER_ATTENTION)
    probs = torch.softmax(scores, dim=-1)  # (N, heads, keys)
    value = AttentionKL()(attention_log_probs(probs), teacher)
    s, t = arr(scores), np.array(TEACHER_ATTENTION)
    assert value.item() == pytest.approx(attention_kl_reference(log_softmax(s), t), rel=1e-6)
    value.backward()
    assert scores.grad is not None
    np.testing.assert_allclose(scores.grad.numpy(), softmax(s) - t, atol=1e-6)


def test_self_attention_kl_is_finite_where_both_give_a_key_zero() -> None:
    """Padding keys: the teacher's probability is 0 and the student's log-probability -inf."""
    student = torch.tensor([[[0.0, 0.0, -torch.inf]]], requires_grad=True)
    teacher = torch.tensor([[[0.75, 0.25, 0.0]]])
    value = AttentionKL()(student, teacher)
    expected = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    assert student.grad is not None
    np.testing.assert_allclose(student.grad.numpy(), [[[-0.25, 0.25, 0.0]]], atol=1e-7)


def float64_pair(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(*shape, generator=g, dtype=torch.float64)
    teacher = torch.randn(*shape, generator=g, dtype=torch.float64)
    return student, teacher


def soft_ce_reference(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    return float(temp * temp * -(softmax(t / temp) * log_softmax(s / temp)).sum(-1).mean())


def embedding_mse_reference(s: np.ndarray, t: np.ndarray) -> float:
    return float(((s - t) ** 2).mean())


def hidden_cosine_reference(s: np.ndarray, t: np.ndarray) -> float:
    cos = (s * t).sum(-1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))
    return float((1 - cos).mean())


def test_transformer_losses_keep_float64() -> None:
    """float64 in, float64 out, equal to a float64 reference far below float32's precision."""
    s, t = float64_pair((5, 7))
    attn_s, attn_t = float64_pair((4, 2, 6))  # (N, heads, keys)
    a_t = torch.softmax(attn_t, dim=-1)
    cases = [
        (SoftTargetCE(temperature=2.0)(s, t), soft_ce_reference(arr(s), arr(t), 2.0)),
        (EmbeddingMSE()(s, t), embedding_mse_reference(arr(s), arr(t))),
        (HiddenCosine()(s, t), hidden_cosine_reference(arr(s), arr(t))),
        (AttentionKL()(attn_s, a_t), attention_kl_reference(log_softmax(arr(attn_s)), arr(a_t))),
    ]
    for value, expected in cases:
        assert value.dtype == torch.float64
        assert value.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_transformer_losses_upcast_half_precision_to_float32(dtype: torch.dtype) -> None:
    s, t = (x.to(dtype) for x in float64_pair((5, 7)))
    for loss in (SoftTargetCE(), EmbeddingMSE(), HiddenCosine()):
        value = loss(s, t)
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(loss(s.float(), t.float()).item(), rel=1e-6)
    assert attention_log_probs(torch.softmax(s, dim=-1)).dtype == torch.float32
