"""Transformer losses (the DistilBERT and MiniLM recipes). Token-level tensors come here
with padding already removed: a caller passes the real tokens' rows, batch first.

They compute in the inputs' dtype promoted to at least float32: half-precision
activations from autocast are upcast, float64 stays float64."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.kd.losses.base import LayerLoss, LogitLoss, Shape
from worker.kd.losses.registry import register_loss
from worker.kd.losses.response import check_temperature


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The inputs' dtypes promoted together and with float32."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def attention_log_probs(probs: torch.Tensor) -> torch.Tensor:
    """The log of attention probabilities (..., keys), for a caller that has only the
    probabilities (a transformer's `output_attentions`), as `self_attention_kl` takes
    the student's. Clamped at the dtype's smallest normal number rather than a larger
    epsilon, so the gradient reaches every probability that has not underflowed to zero;
    at those that have, the clamp stops 0 * inf."""
    dtype = compute_dtype(probs)
    return probs.to(dtype).clamp(min=torch.finfo(dtype).tiny).log()


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
        t, dtype = self.temperature, compute_dtype(student, teacher)
        targets = F.softmax(teacher.to(dtype) / t, dim=-1)  # (N, K)
        log_p = F.log_softmax(student.to(dtype) / t, dim=-1)  # (N, K)
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
        dtype = compute_dtype(student, teacher)
        squares = (student.to(dtype) - teacher.to(dtype)).pow(2)  # (B, D)
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
        dtype = compute_dtype(student, teacher)
        cosine = F.cosine_similarity(student.to(dtype), teacher.to(dtype), dim=-1, eps=1e-8)
        return (1.0 - cosine).mean()


@register_loss("self_attention_kl")
class AttentionKL(LayerLoss):
    """KL divergence between teacher and student self-attention distributions (MiniLM).

    Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation", arXiv:2002.10957:

        L = mean_{rows, heads} sum_j a_t[j] * (log a_t[j] - log a_s[j])

    on maps shaped (..., heads, keys); rows are real query tokens and head counts must
    match. The teacher's are probabilities summing to 1 over the keys; the student's are
    attention scores or log-probabilities, and log a_s = log_softmax(student) normalises
    either (`attention_log_probs` turns probabilities into log-probabilities). Working in
    log space keeps the gradient a_s - a_t on the scores even where a_s has underflowed,
    so the student is pulled towards keys the teacher attends to; a key the teacher gives
    zero probability contributes 0.
    """

    family = "feature"

    @classmethod
    def check_shapes(cls, student_shape: Shape, teacher_shape: Shape) -> None:
        if student_shape != teacher_shape:
            raise ValueError(
                f"self_attention_kl compares attention maps of one shape; the student's are "
                f"{student_shape} and the teacher's {teacher_shape} (same heads needed)."
            )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        self.check_shapes(tuple(student.shape[1:]), tuple(teacher.shape[1:]))
        dtype = compute_dtype(student, teacher)
        log_s = F.log_softmax(student.to(dtype), dim=-1)  # (..., keys)
        t = teacher.to(dtype).clamp(min=0.0)  # (..., keys)
        cross = torch.where(t > 0, t * log_s, 0.0)  # 0 where a_t = 0, even if log a_s = -inf
        kl = torch.xlogy(t, t) - cross  # (..., keys)
        return kl.sum(dim=-1).mean()
