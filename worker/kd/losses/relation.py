"""Relation-based losses: the student keeps the teacher's relations between the samples of
a batch (distances, angles, similarities). Features of any per-sample shape are flattened to
(B, D), so student and teacher widths may differ; a batch needs at least two samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.kd.losses.base import LayerLoss
from worker.kd.losses.registry import register_loss

EPS = 1e-12


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances, zero on the diagonal."""
    sq = e.pow(2).sum(dim=1)  # (B,)
    d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()  # (B, B)
    # The clamp keeps sqrt's gradient finite where a distance is zero (the diagonal).
    d = d2.clamp_min(EPS).sqrt()  # (B, B)
    off_diagonal = 1 - torch.eye(len(e), dtype=e.dtype, device=e.device)  # (B, B)
    return d * off_diagonal


def normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) distances divided by their mean over the distinct pairs."""
    d = pairwise_distances(e)  # (B, B)
    mean = d.sum() / (d > 0).sum().clamp_min(1)
    return d / mean.clamp_min(EPS)


@register_loss("rkd_distance")
class RKDDistance(LayerLoss):
    """RKD distance loss (Park, Kim, Lu & Cho, CVPR 2019, "Relational Knowledge
    Distillation", arXiv:1904.05068):

        psi_D(t_i, t_j) = ||t_i - t_j||_2 / mu,  mu = mean distance over pairs i != j
        L = mean over (i, j) of huber(psi_D(s_i, s_j) - psi_D(t_i, t_j))

    with huber the smooth-L1 function (delta = 1). As in the authors' code the mean runs
    over all B^2 pairs, the zero diagonal included.
    """

    family = "relation"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        d_student = normalised_distances(student.flatten(1))  # (B, B)
        d_teacher = normalised_distances(teacher.flatten(1))  # (B, B)
        return F.smooth_l1_loss(d_student, d_teacher)


def triplet_angles(e: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B, B): [i, j, k] is the cosine of the angle at e_i between e_j and e_k;
    zero where j or k is i."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # (B, B, D): [i, j] = e_j - e_i
    unit = F.normalize(diff, p=2.0, dim=2)  # (B, B, D)
    return torch.bmm(unit, unit.transpose(1, 2))  # (B, B, B)


@register_loss("rkd_angle")
class RKDAngle(LayerLoss):
    """RKD angle loss (Park, Kim, Lu & Cho, CVPR 2019, "Relational Knowledge Distillation",
    arXiv:1904.05068):

        psi_A(t_i, t_j, t_k) = < (t_j - t_i) / ||t_j - t_i||, (t_k - t_i) / ||t_k - t_i|| >
        L = mean over (i, j, k) of huber(psi_A(s_i, s_j, s_k) - psi_A(t_i, t_j, t_k))

    with huber the smooth-L1 function (delta = 1), over all B^3 triplets as in the authors'
    code (a degenerate triplet, where j or k is i, counts as angle-cosine 0 on both sides).
    Memory grows as B^2 * D.
    """

    family = "relation"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        a_student = triplet_angles(student.flatten(1))  # (B, B, B)
        a_teacher = triplet_angles(teacher.flatten(1))  # (B, B, B)
        return F.smooth_l1_loss(a_student, a_teacher)


def batch_similarity(f: torch.Tensor) -> torch.Tensor:
    """(B, *) -> (B, B): the Gram matrix of the flattened features, rows L2-normalised."""
    f = f.flatten(1)  # (B, D)
    return F.normalize(f @ f.t(), p=2.0, dim=1)


@register_loss("sp")
class SimilarityPreserving(LayerLoss):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019, "Similarity-Preserving Knowledge
    Distillation", arXiv:1907.09682):

        G = row_normalise(Q Q^T),  Q the (B, D) flattened features
        L = ||G_t - G_s||_F^2 / B^2
    """

    family = "relation"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        batch = student.shape[0]
        g_student = batch_similarity(student)  # (B, B)
        g_teacher = batch_similarity(teacher)  # (B, B)
        return (g_teacher - g_student).pow(2).sum() / (batch * batch)


def cosine_conditionals(f: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, *) -> (B, B): row i is p(j | i), proportional to the cosine kernel (1 + cos) / 2."""
    f = f.flatten(1)  # (B, D)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    kernel = (f @ f.t() + 1) / 2  # (B, B), in [0, 1]
    return kernel / kernel.sum(dim=1, keepdim=True)


@register_loss("pkt")
class PKT(LayerLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018, "Learning Deep
    Representations with Probabilistic Knowledge Transfer", arXiv:1803.10837), as in the
    authors' code:

        K(a, b)  = (1 + cos(a, b)) / 2
        p_{j|i}  = K(f_i, f_j) / sum_j K(f_i, f_j)
        L        = mean over (i, j) of p^t_{j|i} * log((p^t_{j|i} + eps) / (p^s_{j|i} + eps))

    i.e. KL(teacher || student) of each row's conditional distribution, summed over j and
    averaged over i, divided once more by B (the code's mean over all B^2 entries).
    """

    family = "relation"

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        p_student = cosine_conditionals(student, self.eps)  # (B, B)
        p_teacher = cosine_conditionals(teacher, self.eps)  # (B, B)
        ratio = (p_teacher + self.eps) / (p_student + self.eps)
        return (p_teacher * torch.log(ratio)).mean()
