"""Distillation losses, by name: a registry of small `nn.Module`s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def register(cls: type[nn.Module]) -> type[nn.Module]:
        LOSSES[name] = cls
        return cls

    return register


def get_loss(name: str, **kwargs: Any) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"No loss {name!r} registered; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**kwargs)


class LossParts(NamedTuple):
    total: torch.Tensor  # () the value to backpropagate
    kd: torch.Tensor  # () T^2 * KL term, unweighted
    ce: torch.Tensor | None  # () cross-entropy term, unweighted; None without labels


@register_loss("hinton")
class HintonKDLoss(nn.Module):
    """Response-based KD (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
    Neural Network", arXiv:1503.02531):

        L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    with s, t the student and teacher logits, T the temperature and KL averaged over the
    batch. T^2 keeps the soft-target gradients on the scale of the hard-label ones.
    Without labels the CE term is dropped and the KD term gets all the weight: L = T^2 * KL.
    """

    def __init__(self, temperature: float, alpha: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None
    ) -> LossParts:
        t = self.temperature
        log_p_student = F.log_softmax(student / t, dim=-1)  # (B, K)
        log_p_teacher = F.log_softmax(teacher / t, dim=-1)  # (B, K)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        kd = t * t * kl
        if labels is None:
            return LossParts(kd, kd, None)
        ce = F.cross_entropy(student, labels)
        return LossParts(self.alpha * kd + (1 - self.alpha) * ce, kd, ce)
