"""Top-k KD: the k + 1 bucket distributions against a dense reference, k = V giving the
dense value of every KD term, and the normalisers a temperature needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.worker.kd.losses.reference import softmax
from worker.kd.hf.topk import as_logits, bucket_log_probs, top_k_targets
from worker.kd.losses import get_loss

N, V = 7, 13
TERMS = [
    ("soft_ce", {"temperature": 2.0}),
    ("kd", {"temperature": 1.5}),
    ("reverse_kl", {"temperature": 1.0}),
    ("jsd", {"beta": 0.3, "temperature": 2.0}),
]


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(N, V, generator=generator, dtype=torch.float64)
    teacher = 3.0 * torch.randn(N, V, generator=generator, dtype=torch.float64)
    return student, teacher


def top_k_value(name: str, params: dict, student: torch.Tensor, teacher: torch.Tensor, k: int):
    t = params["temperature"]
    values, top = top_k_targets(teacher, k, (t,))
    s_log, t_log = bucket_log_probs(student, values, top, t)
    loss = get_loss(name, **params)
    return loss(as_logits(s_log, t), as_logits(t_log, t))


@pytest.mark.parametrize(("name", "params"), TERMS)
def test_k_equal_to_the_vocabulary_is_the_dense_term(name, params, logits) -> None:
    student, teacher = logits
    dense = get_loss(name, **params)(student.float(), teacher.float())
    value = top_k_value(name, params, student, teacher, V)
    assert value.item() == pytest.approx(dense.item(), rel=1e-5)


@pytest.mark.parametrize("k", [1, 4, 12])
def test_buckets_are_the_dense_distributions_partitioned(logits, k: int) -> None:
    """Teacher and student at T: the kept tokens' probabilities, and the rest summed."""
    student, teacher = logits
    t = 2.0
    values, top = top_k_targets(teacher, k, (0.5, t))
    s_log, t_log = bucket_log_probs(student, values, top, t)
    p, q = softmax(teacher.numpy() / t), softmax(student.numpy() / t)  # (N, V)
    kept = np.argsort(-teacher.numpy(), axis=-1)[:, :k]  # (N, k)
    for probs, buckets in ((p, t_log), (q, s_log)):
        expected_kept = np.take_along_axis(probs, kept, axis=-1)
        expected = np.concatenate([expected_kept, 1 - expected_kept.sum(-1, keepdims=True)], -1)
        np.testing.assert_allclose(buckets.exp().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_soft_ce_on_buckets_matches_a_numpy_reference(logits) -> None:
    student, teacher = logits
    t, k = 2.0, 3
    value = top_k_value("soft_ce", {"temperature": t}, student, teacher, k)
    p, q = softmax(teacher.numpy() / t), softmax(student.numpy() / t)
    kept = np.argsort(-teacher.numpy(), axis=-1)[:, :k]
    pk, qk = np.take_along_axis(p, kept, -1), np.take_along_axis(q, kept, -1)
    pb = np.concatenate([pk, 1 - pk.sum(-1, keepdims=True)], -1)
    qb = np.concatenate([qk, 1 - qk.sum(-1, keepdims=True)], -1)
    expected = t * t * -(pb * np.log(qb)).sum(-1).mean()
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_the_gradient_reaches_kept_and_rest_tokens(logits) -> None:
    student, teacher = logits
    student = student.float().requires_grad_()
    values, top = top_k_targets(teacher, 3, (1.0,))
    s_log, t_log = bucket_log_probs(student, values, top, 1.0)
    get_loss("soft_ce", temperature=1.0)(s_log, t_log).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    rest = torch.ones_like(student, dtype=torch.bool).scatter_(-1, top.indices, False)
    assert student.grad[rest].abs().sum() > 0  # the rest bucket pulls the others as a group
    # The full vocabulary kept: no NaN from an empty rest bucket.
    student.grad = None
    values, top = top_k_targets(teacher, V, (1.0,))
    s_log, t_log = bucket_log_probs(student, values, top, 1.0)
    get_loss("soft_ce", temperature=1.0)(s_log, t_log).backward()
    assert torch.isfinite(student.grad).all()


def test_normalisers_are_per_temperature(logits) -> None:
    _, teacher = logits
    values, top = top_k_targets(teacher, 4, (1.0, 3.0))
    assert values.shape == (N, 4) and top.indices.shape == (N, 4) and top.norms.shape == (N, 4)
    for t in (1.0, 3.0):
        lse, rest = top.normalisers(t)
        torch.testing.assert_close(lse, torch.logsumexp(teacher.float() / t, -1))
        others = teacher.float().scatter(-1, top.indices, -torch.inf) / t
        torch.testing.assert_close(rest, torch.logsumexp(others, -1))
    with pytest.raises(ValueError):
        top.normalisers(2.0)  # not stored: a job with this temperature computes its own
