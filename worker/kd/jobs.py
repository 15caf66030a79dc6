"""The engine's shared data classes: a job checked and loaded (one per kind of job), a
trained model, and what `distill` returns. Modules that pass a job along import it from
here, so none of them needs the module that made it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.kd.budget import Plan
from worker.kd.datasets.splits import Splits
from worker.kd.hf.data import Encoded, TextSplits
from worker.kd.hf.models import LoadedTeacher
from worker.kd.hf.objective import TransformerObjective
from worker.kd.spec import JobSpec
from worker.kd.training.trainer import TrainOutcome


@dataclass
class Prepared:
    """A tensor-classification job checked and loaded, ready to train."""

    spec: JobSpec
    teacher: nn.Module
    data: Splits
    input_shape: tuple[int, ...]
    num_classes: int
    device: torch.device
    teacher_path: Path
    dataset_path: Path | None
    student_path: Path | None = None
    plan: Plan | None = None  # the training the engine planned (None: the spec stated it all)
    task = "tensor_classification"

    @property
    def dataset_name(self) -> str:
        builtin = self.spec.dataset.builtin
        return f"builtin:{builtin}" if builtin else Path(str(self.dataset_path)).name


@dataclass
class HFPrepared:
    """A transformer job (Hugging Face teacher) checked and loaded, ready to train: `val`
    selects (best epoch, early stopping), `evaluation` is what the report is measured on,
    used for no choice (`worker.kd.hf.data`'s three splits)."""

    spec: JobSpec
    teacher: LoadedTeacher
    student: nn.Module
    objective: TransformerObjective
    train: Encoded
    val: Encoded
    device: torch.device
    teacher_path: Path
    dataset_path: Path | None
    plan: Plan | None = None  # the training the engine planned (None: the spec stated it all)
    student_path: Path | None = None  # an `hf_file` student's uploaded model ZIP
    # method sequence: the teacher's completions (worker.kd.tasks.sequence_kd.Generated)
    generated: list[Any] | None = None
    splits: TextSplits | None = None  # None: `val` is all there is (a caller's own split)
    eval_dataset_path: Path | None = None  # dataset.eval_file_id's upload

    @property
    def evaluation(self) -> Encoded:
        """The texts the report is measured on."""
        return self.val if self.splits is None else self.splits.evaluation

    @property
    def task(self) -> str:
        return self.teacher.task


@dataclass
class Trained:
    """A student architecture after a training run, and how the run went."""

    student: nn.Module
    outcome: TrainOutcome


@dataclass
class DistillResult:
    report: dict[str, Any]  # exactly what is written to report.json
    artifacts: dict[str, Path]  # artifact name -> file in out_dir
