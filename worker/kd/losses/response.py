"""Response-based losses: the student matches the teacher's logits."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from worker.kd.losses.base import LogitLoss, LossInputs
from worker.kd.losses.registry import register_loss


def kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """The elementwise terms p * (log p - log q) of KL(p || q), from log-probabilities.

    A class that p gives zero probability (log p = -inf, or exp(log p) underflowing)
    contributes 0, the limit of p log p at 0; `F.kl_div(..., log_target=True)` computes
    0 * -inf = NaN there, in the value and in the gradient.
    """
    p = log_p.exp()
    gap = torch.where(p > 0, log_p - log_q, 0.0)
    return p * gap


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)), summed over classes, averaged over rows.

    A teacher logit of -inf (a class the teacher rules out) contributes 0: its
    log-probability is raised to the dtype's lowest finite value, whose exp is still 0, so
    that `kl_div` does not compute 0 * -inf = NaN. The clamp is on the teacher's side only,
    which has no gradient: the student's step costs what `kl_div` alone costs."""
    t = temperature
    log_p_student = F.log_softmax(student / t, dim=-1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher / t, dim=-1)  # (B, K)
    log_p_teacher = log_p_teacher.clamp(min=torch.finfo(log_p_teacher.dtype).min)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return t * t * kl


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


class LossParts(NamedTuple):
    total: torch.Tensor  # () the value to backpropagate
    kd: torch.Tensor  # () T^2 * KL term, unweighted
    ce: torch.Tensor | None  # () cross-entropy term, unweighted; None without labels


@register_loss("hinton")
class HintonKDLoss(LogitLoss):
    """Hinton KD with its cross-entropy term built in (the engine's default loss).

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531:

        L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    with s, t the student and teacher logits, T the temperature and KL averaged over the
    batch. T^2 keeps the soft-target gradients on the scale of the hard-label ones.
    Without labels the CE term is dropped and the KD term gets all the weight: L = T^2 * KL.
    """

    def __init__(self, temperature: float, alpha: float) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature
        self.alpha = alpha

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None
    ) -> LossParts:
        kd = soft_kl(student, teacher, self.temperature)
        if labels is None:
            return LossParts(kd, kd, None)
        ce = F.cross_entropy(student, labels)
        return LossParts(self.alpha * kd + (1 - self.alpha) * ce, kd, ce)

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        parts: LossParts = self(inputs.student_logits, inputs.teacher_logits, inputs.labels)
        return parts.total


@register_loss("kd")
class KD(LogitLoss):
    """Soft-target KD term alone (Hinton, Vinyals & Dean 2015, arXiv:1503.02531).

        L = T^2 * KL(softmax(t / T) || softmax(s / T))

    KL summed over the K classes and averaged over the batch ("batchmean"); s, t are the
    student and teacher logits, T the temperature. Add a `ce` term for the hard labels.
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return soft_kl(student, teacher, self.temperature)


@register_loss("dkd")
class DKD(LogitLoss):
    """Decoupled KD (Zhao, Cui, Song, Qiu & Liang, CVPR 2022, "Decoupled Knowledge
    Distillation", arXiv:2203.08679), as in the official mdistiller code.

        L    = alpha * TCKD + beta * NCKD
        TCKD = T^2 * KL(b_t || b_s),  b = [p_y, 1 - p_y],  p = softmax(z / T)
        NCKD = T^2 * KL(q_t || q_s),  q = softmax over the non-target classes of z / T

    with y the true class; both KLs are summed over classes and averaged over the batch.
    Everything is computed in log space: log p_y, log(1 - p_y) as the log-sum-exp of the
    other classes' logits less that of all, and log q as a log-softmax with the target
    masked out. mdistiller takes log(1 - p_y) of probabilities and masks the target by
    subtracting 1000, which is the same value while no probability underflows and NaN
    once one does (a confident logit a few hundred above the rest). mdistiller's linear
    warm-up of the whole term over the first epochs belongs to the training schedule, not
    to this module. Needs labels.
    """

    needs_labels = True

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        check_temperature(temperature)
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        t, batch = self.temperature, student.shape[0]
        log_b_student, log_q_student = decoupled_log_probs(student / t, labels)
        log_b_teacher, log_q_teacher = decoupled_log_probs(teacher / t, labels)
        tckd = kl_terms(log_b_teacher, log_b_student).sum() * t * t / batch
        nckd = kl_terms(log_q_teacher, log_q_student).sum() * t * t / batch
        return self.alpha * tckd + self.beta * nckd

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        labels = self.require_labels(inputs)
        value: torch.Tensor = self(inputs.student_logits, inputs.teacher_logits, labels)
        return value


def decoupled_log_probs(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) logits and (B,) labels -> DKD's two distributions, as log-probabilities:
    log b (B, 2), the target's log p_y and the rest's log(1 - p_y); and log q (B, K), the
    distribution over the non-target classes, -inf at the target."""
    target_mask = F.one_hot(labels, logits.shape[-1]).bool()  # (B, K)
    others = logits.masked_fill(target_mask, float("-inf"))  # (B, K)
    log_all = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, 1)
    log_others = torch.logsumexp(others, dim=-1, keepdim=True)  # (B, 1)
    target = logits.gather(-1, labels.unsqueeze(-1))  # (B, 1)
    log_b = torch.cat([target - log_all, log_others - log_all], dim=-1)  # (B, 2)
    return log_b, others - log_others


@register_loss("logit_mse")
class LogitMSE(LogitLoss):
    """Mean squared error between logits (Ba & Caruana 2014, "Do Deep Nets Really Need to
    be Deep?", arXiv:1312.6184):

        L = mean over (b, k) of (s_bk - t_bk)^2
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student, teacher)
