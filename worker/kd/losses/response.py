"""Response-based losses: the student matches the teacher's logits."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from worker.kd.losses.base import LogitLoss, LossInputs
from worker.kd.losses.registry import register_loss

# DKD pushes the true class's logit this far down so that a softmax sees only the others.
GT_SUPPRESSION = 1000.0


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)), summed over classes, averaged over rows."""
    t = temperature
    log_p_student = F.log_softmax(student / t, dim=-1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher / t, dim=-1)  # (B, K)
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
    q is computed as mdistiller does: softmax(z / T - 1000 * onehot(y)), which drives the
    target's probability to zero. mdistiller's linear warm-up of the whole term over the
    first epochs belongs to the training schedule, not to this module. Needs labels.
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
        gt_mask = F.one_hot(labels, student.shape[-1]).to(student.dtype)  # (B, K)
        p_student = F.softmax(student / t, dim=-1)  # (B, K)
        p_teacher = F.softmax(teacher / t, dim=-1)  # (B, K)
        b_student = target_and_rest(p_student, gt_mask)  # (B, 2)
        b_teacher = target_and_rest(p_teacher, gt_mask)  # (B, 2)
        tckd = F.kl_div(torch.log(b_student), b_teacher, reduction="sum") * t * t / batch
        log_q_student = F.log_softmax(student / t - GT_SUPPRESSION * gt_mask, dim=-1)  # (B, K)
        q_teacher = F.softmax(teacher / t - GT_SUPPRESSION * gt_mask, dim=-1)  # (B, K)
        nckd = F.kl_div(log_q_student, q_teacher, reduction="sum") * t * t / batch
        return self.alpha * tckd + self.beta * nckd

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        labels = self.require_labels(inputs)
        value: torch.Tensor = self(inputs.student_logits, inputs.teacher_logits, labels)
        return value


def target_and_rest(probs: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """(B, K) probabilities -> (B, 2): the target class's, and the others' summed."""
    target = (probs * gt_mask).sum(dim=-1, keepdim=True)  # (B, 1)
    rest = (probs * (1 - gt_mask)).sum(dim=-1, keepdim=True)  # (B, 1)
    return torch.cat([target, rest], dim=-1)


@register_loss("logit_mse")
class LogitMSE(LogitLoss):
    """Mean squared error between logits (Ba & Caruana 2014, "Do Deep Nets Really Need to
    be Deep?", arXiv:1312.6184):

        L = mean over (b, k) of (s_bk - t_bk)^2
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student, teacher)
