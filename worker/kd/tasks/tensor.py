"""The tensor-classification adapter: samples are tensors (B, *input_shape), the student
returns logits (B, K), the objective is a weighted sum of registry loss terms on logits and
named layers' outputs, and inputs may be augmented (consistent teaching)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from worker.kd.datasets.splits import Splits
from worker.kd.losses import CompositeLoss
from worker.kd.training.augment import Augmenter
from worker.kd.training.distributed import WHOLE
from worker.kd.training.evaluate import ValidationSet, accuracy, agreement, predict_logits
from worker.kd.training.features import module_features
from worker.kd.training.pairing import LayerPair
from worker.kd.training.trainer import Cast

TeacherBatch = tuple[torch.Tensor, dict[str, torch.Tensor]]  # logits (B, K), layer -> (B, *S)


class TeacherSource(Protocol):
    def __call__(self, idx: torch.Tensor, x: torch.Tensor, augmented: bool) -> TeacherBatch: ...


@dataclass
class Objective:
    """The loss and what it needs each step."""

    loss: CompositeLoss
    needs_teacher: bool
    pairing: tuple[LayerPair, ...] = ()  # layers paired automatically (training.pairing)

    @property
    def student_layers(self) -> tuple[str, ...]:
        return self.loss.student_layers


@dataclass
class TensorAdapter:
    """Feeds `student` batches of `data`, augmented when the recipe asks, with the
    teacher's outputs from `teacher` (None for the teacher-free baseline)."""

    student: nn.Module
    objective: Objective
    teacher: TeacherSource | None
    data: Splits
    val: ValidationSet
    device: torch.device
    augmenter: Augmenter

    @property
    def num_examples(self) -> int:
        return len(self.data.x_train)

    def loss(
        self, idx: torch.Tensor, cast: Cast, part: slice = WHOLE
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.data.x_train[idx].to(self.device)  # (B, *input_shape)
        y = None if self.data.y_train is None else self.data.y_train[idx].to(self.device)  # (B,)
        augmented = self.augmenter.active
        if augmented:  # drawn for the whole batch: every process draws the same
            x, y = self.augmenter(x, y)  # targets may be mixed one-hot (B, K)
        if part != WHOLE:  # this process's part of the batch: (b, ...)
            idx, x, y = idx[part], x[part], None if y is None else y[part]
        teacher_logits: torch.Tensor | None = None
        teacher_features: dict[str, torch.Tensor] = {}
        if self.objective.needs_teacher:
            assert self.teacher is not None
            teacher_logits, teacher_features = self.teacher(idx, x, augmented)
        with cast():
            student_logits, student_features = module_features(
                self.student, x, self.objective.student_layers
            )  # (B, K), layer -> (B, *S)
            parts = self.objective.loss(
                student_logits.float(),
                (student_logits.detach() if teacher_logits is None else teacher_logits).float(),
                y,
                {k: v.float() for k, v in student_features.items()},
                {k: v.float() for k, v in teacher_features.items()},
            )
        return parts.total, parts.parts

    def evaluate(self) -> dict[str, float]:
        student_logits = predict_logits(self.student, self.val.x, self.device)  # (M, K)
        return {
            "val_accuracy": accuracy(student_logits, self.val.labels),
            "val_agreement": agreement(student_logits, self.val.teacher_logits),
        }

    def rng_state(self) -> torch.Tensor:
        return self.augmenter.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.augmenter.generator.set_state(state)
