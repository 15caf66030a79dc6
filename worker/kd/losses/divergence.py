"""Divergences between a student's and a teacher's next-token distributions, for causal
LMs: reverse KL (MiniLLM) and the generalized Jensen-Shannon divergence of GKD, whose
`beta` moves from forward KL (0) to reverse KL (1).

`generalized_jsd` is the function an on-policy method calls on its own batches: rows of
logits (N, V), or padded (B, T, V) with a `mask` (B, T) of the tokens that count. Neither
is scaled by T^2 (GKD's and TRL's convention, unlike `soft_ce`): with the default
temperature 1 the values are the divergences themselves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from worker.kd.losses.base import LogitLoss
from worker.kd.losses.registry import register_loss
from worker.kd.losses.response import check_temperature, kl_terms
from worker.kd.losses.transformer import compute_dtype


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean over tokens (rows, or the positions `mask` marks) of a (..,) tensor."""
    if mask is None:
        return per_token.mean()
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


def _log_probs(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    check_temperature(temperature)
    dtype = compute_dtype(student, teacher)
    log_q = F.log_softmax(student.to(dtype) / temperature, dim=-1)  # (..., V) student
    log_p = F.log_softmax(teacher.to(dtype) / temperature, dim=-1)  # (..., V) teacher
    return log_q, log_p


def reverse_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(q || p) with q = softmax(s / T) the student's and p = softmax(t / T) the
    teacher's distribution, summed over the vocabulary, averaged over tokens."""
    log_q, log_p = _log_probs(student, teacher, temperature)
    return _token_mean(kl_terms(log_q, log_p).sum(dim=-1), mask)


def generalized_jsd(
    student: torch.Tensor,
    teacher: torch.Tensor,
    beta: float,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """GKD's generalized JSD (Agarwal et al. 2024, "On-Policy Distillation of Language
    Models: Learning from Self-Generated Mistakes", arXiv:2306.13649; as TRL's GKDTrainer
    computes it), per token, averaged over tokens:

        M = beta * p + (1 - beta) * q
        JSD_beta = beta * KL(p || M) + (1 - beta) * KL(q || M)

    with p the teacher's and q the student's softmax at temperature T. The ends are
    defined as GKD defines them: beta = 0 is forward KL(p || q), beta = 1 reverse
    KL(q || p) (the formula itself tends to 0 there)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    log_q, log_p = _log_probs(student, teacher, temperature)
    if beta == 0.0:
        per_token = kl_terms(log_p, log_q).sum(dim=-1)
    elif beta == 1.0:
        per_token = kl_terms(log_q, log_p).sum(dim=-1)
    else:
        log_m = torch.logsumexp(
            torch.stack([log_p + math.log(beta), log_q + math.log(1.0 - beta)]), dim=0
        )  # (..., V)
        per_token = beta * kl_terms(log_p, log_m).sum(dim=-1) + (1.0 - beta) * kl_terms(
            log_q, log_m
        ).sum(dim=-1)
    return _token_mean(per_token, mask)


@register_loss("reverse_kl")
class ReverseKL(LogitLoss):
    """Reverse KL between next-token distributions: mode-seeking (MiniLLM).

    Gu et al. 2024, "MiniLLM: Knowledge Distillation of Large Language Models",
    arXiv:2306.08543: L = mean_tokens sum_v q_v (log q_v - log p_v), q = softmax(s / T)
    the student's, p = softmax(t / T) the teacher's; not scaled by T^2.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return reverse_kl(student, teacher, self.temperature)


@register_loss("jsd")
class GeneralizedJSD(LogitLoss):
    """Generalized Jensen-Shannon divergence of GKD: beta 0 forward KL, 1 reverse KL.

    Agarwal et al. 2024, arXiv:2306.13649: with M = beta * p + (1 - beta) * q,
    L = mean_tokens [beta * KL(p || M) + (1 - beta) * KL(q || M)]; p the teacher's and q
    the student's softmax at temperature T, not scaled by T^2
    (`worker.kd.losses.divergence.generalized_jsd`).
    """

    def __init__(self, beta: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        check_temperature(temperature)
        self.beta = beta
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return generalized_jsd(student, teacher, self.beta, self.temperature)
