"""Label losses: the student learns from the dataset's labels, not the teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.kd.losses.base import DistillationLoss, LossInputs
from worker.kd.losses.registry import register_loss


@register_loss("ce")
class CrossEntropy(DistillationLoss):
    """Cross-entropy of the student's logits against the true labels:

        L = mean over b of -log softmax(s_b)[y_b]

    optionally with label smoothing (Szegedy et al. 2016, arXiv:1512.00567). Needs labels.
    """

    family = "label"
    needs_labels = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student, labels, label_smoothing=self.label_smoothing)

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        value: torch.Tensor = self(inputs.student_logits, self.require_labels(inputs))
        return value
