"""Feature-based losses: the student's intermediate outputs match the teacher's.

Shapes here are per sample (batch excluded): (D,) vectors, (C, L) sequences, (C, H, W) maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from worker.kd.errors import fmt_shape
from worker.kd.losses.base import LayerLoss, Shape, as_shape
from worker.kd.losses.registry import register_loss

POOLS: dict[int, Callable[..., torch.Tensor]] = {
    1: F.adaptive_avg_pool1d,
    2: F.adaptive_avg_pool2d,
    3: F.adaptive_avg_pool3d,
}


def common_size(a: Sequence[int], b: Sequence[int]) -> Shape:
    """The smaller of two spatial sizes, dimension by dimension."""
    return tuple(min(x, y) for x, y in zip(a, b, strict=True))


def pool_to(x: torch.Tensor, size: Shape) -> torch.Tensor:
    """Adaptive-average-pool (B, C, *spatial) down to (B, C, *size); unchanged if equal."""
    if tuple(x.shape[2:]) == size:
        return x
    return POOLS[len(size)](x, size)


def mismatch(loss: str, student: Sequence[int], teacher: Sequence[int], why: str) -> ValueError:
    return ValueError(
        f"The {loss!r} loss cannot compare student features of shape {fmt_shape(student)} "
        f"with teacher features of shape {fmt_shape(teacher)}: {why}"
    )


def check_built_shapes(
    loss: str, student: torch.Tensor, teacher: torch.Tensor, expected: tuple[Shape, Shape]
) -> None:
    got = (tuple(student.shape[1:]), tuple(teacher.shape[1:]))
    if got != expected:
        raise ValueError(
            f"The {loss!r} loss was built for student features {fmt_shape(expected[0])} and "
            f"teacher features {fmt_shape(expected[1])} per sample, but got "
            f"{fmt_shape(got[0])} and {fmt_shape(got[1])}."
        )


def hint_adapter(student: Shape, teacher: Shape) -> tuple[nn.Module, bool]:
    """The FitNets regressor from student to teacher features, and whether the student's
    features are flattened first."""
    if len(teacher) == 1:
        return nn.Linear(math.prod(student), teacher[0]), len(student) > 1
    if len(student) == len(teacher) == 2:
        return nn.Conv1d(student[0], teacher[0], kernel_size=1), False
    if len(student) == len(teacher) == 3:
        return nn.Conv2d(student[0], teacher[0], kernel_size=1), False
    raise mismatch(
        "hint",
        student,
        teacher,
        "pick layers of the same rank, (D,), (C, L) or (C, H, W), or a teacher layer of "
        "shape (D,) to map the flattened student features to.",
    )


def check_dims(loss: str, student: Shape, teacher: Shape) -> None:
    if not student or not teacher or min(student + teacher) < 1:
        raise mismatch(loss, student, teacher, "every layer needs at least one non-empty dim.")


@register_loss("hint")
class Hint(LayerLoss):
    """FitNets hint loss (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets",
    arXiv:1412.6550):

        L = mean over elements of (r(F_s) - F_t)^2

    r is a learned regressor from the student's feature shape to the teacher's: Linear for
    (D,) features (or for any student features flattened, when the teacher's are (D,)),
    a 1x1 Conv1d for (C, L) and a 1x1 Conv2d for (C, H, W). Where spatial sizes differ,
    each dimension is adaptive-average-pooled down to the smaller of the two. r's parameters
    belong to this module, so the optimizer must train them alongside the student.
    """

    family = "feature"
    needs_shapes = True

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        super().__init__()
        self.student_shape, self.teacher_shape = as_shape(student_shape), as_shape(teacher_shape)
        check_dims("hint", self.student_shape, self.teacher_shape)
        self.adapter, self.flatten = hint_adapter(self.student_shape, self.teacher_shape)
        self.size = (
            () if self.flatten else common_size(self.student_shape[1:], self.teacher_shape[1:])
        )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        check_built_shapes(self.key, student, teacher, (self.student_shape, self.teacher_shape))
        # (B, prod(S)) flattened, or (B, C_s, *size) pooled
        student = student.flatten(1) if self.flatten else pool_to(student, self.size)
        student = self.adapter(student)  # (B, D_t) or (B, C_t, *size)
        teacher = pool_to(teacher, self.size)  # (B, D_t) or (B, C_t, *size)
        return F.mse_loss(student, teacher)


def attention_map(features: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, *spatial) -> (B, prod(spatial)): mean over channels of |f|^p, L2-normalised."""
    a = features.abs().pow(p).mean(dim=1).flatten(1)  # (B, prod(spatial))
    return F.normalize(a, p=2.0, dim=1)


@register_loss("attention")
class Attention(LayerLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to
    Attention", arXiv:1612.03928), as in the authors' code:

        Q   = vec(mean over channels of |F|^p),  p = 2
        L   = mean over (b, j) of (Q_s / ||Q_s||_2 - Q_t / ||Q_t||_2)^2_bj

    The paper writes (beta / 2) * || Q_s/||Q_s|| - Q_t/||Q_t|| ||_p summed over layer pairs;
    we keep the code's squared mean and leave beta (1e3 in the paper) to the term's weight.
    Channel counts may differ; spatial sizes are adaptive-average-pooled to the smaller in
    each dimension. Features are (C, L), (C, H, W) or (C, D, H, W) per sample.
    """

    family = "feature"

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        if not p > 0:
            raise ValueError(f"p must be positive, got {p}")
        self.p = p

    @classmethod
    def check_shapes(cls, student_shape: Shape, teacher_shape: Shape) -> None:
        check_dims("attention", student_shape, teacher_shape)
        if len(student_shape) != len(teacher_shape) or not 2 <= len(student_shape) <= 4:
            raise mismatch(
                "attention",
                student_shape,
                teacher_shape,
                "it needs spatial features of the same rank, (C, L), (C, H, W) or (C, D, H, W).",
            )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        self.check_shapes(tuple(student.shape[1:]), tuple(teacher.shape[1:]))
        size = common_size(student.shape[2:], teacher.shape[2:])
        a_student = attention_map(pool_to(student, size), self.p)  # (B, prod(size))
        a_teacher = attention_map(pool_to(teacher, size), self.p)  # (B, prod(size))
        return (a_student - a_teacher).pow(2).mean()


@register_loss("cosine")
class Cosine(LayerLoss):
    """Hidden-state cosine loss of DistilBERT (Sanh et al. 2019, arXiv:1910.01108):

        L = mean over positions of 1 - cos(r(h_s), h_t)

    over the last dimension (the hidden width), averaged over the batch and any positions
    before it: (D,) or (L, D) per sample. r is a learned Linear(D_s, D_t) when the widths
    differ and the identity otherwise. DistilBERT also masks padding; this loss has no mask.
    """

    family = "feature"
    needs_shapes = True

    def __init__(
        self, student_shape: Sequence[int], teacher_shape: Sequence[int], eps: float = 1e-8
    ) -> None:
        super().__init__()
        self.student_shape, self.teacher_shape = as_shape(student_shape), as_shape(teacher_shape)
        check_dims("cosine", self.student_shape, self.teacher_shape)
        if self.student_shape[:-1] != self.teacher_shape[:-1]:
            raise mismatch(
                "cosine",
                self.student_shape,
                self.teacher_shape,
                "all but the last (hidden) dimension must be equal.",
            )
        width_s, width_t = self.student_shape[-1], self.teacher_shape[-1]
        self.adapter: nn.Module = (
            nn.Identity() if width_s == width_t else nn.Linear(width_s, width_t)
        )
        self.eps = eps

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        check_built_shapes(self.key, student, teacher, (self.student_shape, self.teacher_shape))
        student = self.adapter(student)  # (B, ..., D_t)
        cos = F.cosine_similarity(student, teacher, dim=-1, eps=self.eps)  # (B, ...)
        return (1 - cos).mean()
