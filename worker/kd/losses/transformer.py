"""Transformer losses (the DistilBERT and MiniLM recipes). Token-level tensors come here
with padding already removed: a caller passes the real tokens' rows, batch first."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.kd.losses.base import LayerLoss, LogitLoss, Shape
from worker.kd.losses.registry import register_loss
from worker.kd.losses.response import check_temperature


@register_loss("soft_ce")
class SoftTargetCE(LogitLoss):
    """Soft-target cross-entropy on logits over classes or a vocabulary (DistilBERT's L_ce).

    Sanh et al. 2019, "DistilBERT", arXiv:1910.01108; Hinton et al. 2015:

        L = T^2 * mean_rows( -sum_k softmax(t / T)_k * log_softmax(s / T)_k )

    Rows are samples (B, K) or real tokens (N, V). It differs from T^2 * KL by the
    teacher's entropy, a constant, so the gradients are the same.
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        targets = F.softmax(teacher.float() / t, dim=-1)  # (N, K)
        log_p = F.log_softmax(student.float() / t, dim=-1)  # (N, K)
        return t * t * -(targets * log_p).sum(dim=-1).mean()


@register_loss("embedding_mse")
class EmbeddingMSE(LogitLoss):
    """Squared error between student and teacher sentence embeddings (B, D).

    Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings Multilingual using
    Knowledge Distillation", arXiv:2004.09813: L = mean over (b, d) of (s - t)^2 with
    `reduction="mean"`. With `reduction="sum"` the squares are summed over the D dimensions
    and averaged over the texts, L = mean_b ||s_b - t_b||^2 (2 - 2 cos for unit vectors):
    the same scale whatever the width, which is what lets it sit beside a cosine term
    (the mean shrinks it by D: 384 for MiniLM, and the other term takes over).
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        squares = (student.float() - teacher.float()).pow(2)  # (B, D)
        return squares.mean() if self.reduction == "mean" else squares.sum(-1).mean()


@register_loss("hidden_cosine")
class HiddenCosine(LayerLoss):
    """Cosine distance between student and teacher hidden states (DistilBERT's L_cos).

    Sanh et al. 2019, arXiv:1910.01108: L = mean_rows(1 - cos(h_s, h_t)), over the last
    dimension; rows are real tokens (N, H) or any (B, ..., H). Widths must match (a
    `from_teacher` student's do); terms without layers use the student's layer map.
    """

    family = "feature"

    @classmethod
    def check_shapes(cls, student_shape: Shape, teacher_shape: Shape) -> None:
        if student_shape[-1:] != teacher_shape[-1:]:
            raise ValueError(
                f"hidden_cosine compares states of equal width; the student's are "
                f"{student_shape[-1:]} and the teacher's {teacher_shape[-1:]}."
            )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        self.check_shapes(tuple(student.shape), tuple(teacher.shape))
        cosine = F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
        return (1.0 - cosine).mean()


@register_loss("self_attention_kl")
class AttentionKL(LayerLoss):
    """KL divergence between teacher and student self-attention distributions (MiniLM).

    Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation", arXiv:2002.10957:

        L = mean_{rows, heads} sum_j a_t[j] * (log a_t[j] - log a_s[j])

    on attention probabilities shaped (..., heads, keys) whose last dimension sums to 1;
    rows are real query tokens. Head counts must match.
    """

    family = "feature"
    eps = 1e-12

    @classmethod
    def check_shapes(cls, student_shape: Shape, teacher_shape: Shape) -> None:
        if student_shape != teacher_shape:
            raise ValueError(
                f"self_attention_kl compares attention maps of one shape; the student's are "
                f"{student_shape} and the teacher's {teacher_shape} (same heads needed)."
            )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        self.check_shapes(tuple(student.shape[1:]), tuple(teacher.shape[1:]))
        s, t = student.float(), teacher.float().clamp(min=0.0)
        kl = torch.xlogy(t, t) - t * torch.log(s.clamp(min=self.eps))  # (..., keys)
        return kl.sum(dim=-1).mean()
