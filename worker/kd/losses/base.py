"""What every distillation loss shares: its inputs, its family and a uniform `compute`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

Family = Literal["response", "feature", "relation", "label"]
Shape = tuple[int, ...]

# Losses of these families compare intermediate outputs, so a term names one layer of each model.
LAYER_FAMILIES: frozenset[str] = frozenset({"feature", "relation"})


@dataclass(frozen=True)
class LossInputs:
    """One batch as a loss term sees it. The features are the outputs of the term's own
    `student_layer` and `teacher_layer`, batch first; teacher tensors are expected to come
    from a forward pass under `torch.no_grad()`."""

    student_logits: torch.Tensor  # (B, K)
    teacher_logits: torch.Tensor  # (B, K)
    labels: torch.Tensor | None = None  # (B,) class indices
    student_features: torch.Tensor | None = None  # (B, *S)
    teacher_features: torch.Tensor | None = None  # (B, *T)


class DistillationLoss(nn.Module):
    """A registered loss. Subclasses set `family` and implement `forward` on the tensors they
    need; `compute` picks those tensors out of a `LossInputs`, so a caller can treat every
    loss alike."""

    key: ClassVar[str] = ""  # the registered name, set by `register_loss`
    family: ClassVar[Family]
    needs_labels: ClassVar[bool] = False
    # Built from the per-sample shapes of the two layers: `cls(student_shape, teacher_shape)`.
    needs_shapes: ClassVar[bool] = False

    @classmethod
    def uses_layers(cls) -> bool:
        return cls.family in LAYER_FAMILIES

    @classmethod
    def check_shapes(cls, student_shape: Shape, teacher_shape: Shape) -> None:
        """Raise ValueError when the loss cannot compare layers of these per-sample shapes."""

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        raise NotImplementedError

    def require_labels(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.labels is None:
            raise ValueError(
                f"The {self.key!r} loss needs labels, and this batch has none; "
                "give the dataset a `y` array or drop the term."
            )
        return inputs.labels


class LogitLoss(DistillationLoss):
    """A response-based loss: a function of the student's and the teacher's logits."""

    family: ClassVar[Family] = "response"

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        value: torch.Tensor = self(inputs.student_logits, inputs.teacher_logits)
        return value


class LayerLoss(DistillationLoss):
    """A feature- or relation-based loss: a function of two intermediate outputs."""

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.student_features is None or inputs.teacher_features is None:
            raise ValueError(
                f"The {self.key!r} loss compares intermediate layers; "
                "it needs both student_features and teacher_features."
            )
        if inputs.student_features.shape[0] != inputs.teacher_features.shape[0]:
            raise ValueError(
                f"The {self.key!r} loss got {inputs.student_features.shape[0]} student and "
                f"{inputs.teacher_features.shape[0]} teacher samples; they must be the same batch."
            )
        value: torch.Tensor = self(inputs.student_features, inputs.teacher_features)
        return value


def as_shape(shape: Sequence[int]) -> Shape:
    return tuple(int(d) for d in shape)
