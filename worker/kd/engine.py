"""The engine's entry points: `prepare` checks and loads a job, `distill` trains and reports.

`prepare` is the pipeline's "validating" stage: it fails fast, with a KDError whose message
says what to fix, before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from worker.kd.cache import TeacherCache
from worker.kd.checkpoint import Checkpointing
from worker.kd.data import Splits, load_dataset
from worker.kd.errors import IncompatibleModels, InvalidSpec
from worker.kd.reporting import Reporter
from worker.kd.runner import run_training
from worker.kd.spec import TRANSFORMER_ARCHS, JobSpec
from worker.kd.student_size import too_large
from worker.kd.students import build_student, load_file_student
from worker.kd.teachers import load_teacher, probe_teacher
from worker.kd.text import fmt_shape, shorten

if TYPE_CHECKING:
    from worker.kd.hf.engine import HFPrepared


@dataclass
class Prepared:
    """A job checked and loaded, ready to train."""

    spec: JobSpec
    teacher: nn.Module
    data: Splits
    input_shape: tuple[int, ...]
    num_classes: int
    device: torch.device
    teacher_path: Path
    dataset_path: Path | None
    student_path: Path | None = None

    @property
    def dataset_name(self) -> str:
        builtin = self.spec.dataset.builtin
        return f"builtin:{builtin}" if builtin else Path(str(self.dataset_path)).name


@dataclass
class DistillResult:
    report: dict[str, Any]  # exactly what is written to report.json
    artifacts: dict[str, Path]  # artifact name -> file in out_dir


def prepare(
    spec: JobSpec,
    teacher_path: Path,
    dataset_path: Path | None,
    student_path: Path | None = None,
    max_student_params: int | None = None,
) -> Prepared | HFPrepared:
    """Load and check teacher and dataset against each other and the spec. `dataset_path`
    is None for a builtin dataset; `student_path` is the file of an `arch: file` student.
    A Hugging Face model-directory ZIP teacher makes a transformer job (worker.kd.hf)."""
    device = resolve_device(spec.training.device)
    from worker.kd.hf.engine import is_hf_teacher, prepare_hf

    if is_hf_teacher(spec, Path(teacher_path)):
        return prepare_hf(spec, Path(teacher_path), dataset_path, device)
    if spec.student.arch in TRANSFORMER_ARCHS:
        raise InvalidSpec(
            f"student.arch {spec.student.arch!r} needs a Hugging Face teacher (a ZIP of a "
            "save_pretrained directory)."
        )
    data = load_dataset(spec.dataset, dataset_path, spec.training.val_fraction, spec.training.seed)
    example = data.x_train[:2]  # (2, *input_shape)
    teacher = load_teacher(Path(teacher_path), spec.teacher, example=example).to(device)
    num_classes = probe_teacher(teacher, example.to(device))
    check_labels_fit(data, num_classes)
    if spec.student.arch == "file":
        if student_path is None:
            raise InvalidSpec("student.file_id: the student file was not given to the engine.")
        load_file_student(Path(student_path), example=example, num_classes=num_classes)
    else:
        check_student_fits(spec, data.input_shape, num_classes, max_student_params)
    return Prepared(
        spec=spec,
        teacher=teacher,
        data=data,
        input_shape=data.input_shape,
        num_classes=num_classes,
        device=device,
        teacher_path=Path(teacher_path),
        dataset_path=None if dataset_path is None else Path(dataset_path),
        student_path=None if student_path is None else Path(student_path),
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidSpec(
            'training.device is "cuda" but this worker has no CUDA GPU. '
            'Use "auto" (GPU when there is one) or "cpu".'
        )
    return torch.device(name)


def check_labels_fit(data: Splits, num_classes: int) -> None:
    max_label = data.max_label()
    if max_label is not None and max_label >= num_classes:
        raise IncompatibleModels(
            f"The dataset has labels up to {max_label} ({max_label + 1} classes) but the teacher "
            f"outputs {num_classes} logits; labels must be in [0, {num_classes})."
        )


def check_student_fits(
    spec: JobSpec, input_shape: tuple[int, ...], num_classes: int, max_params: int | None = None
) -> None:
    """Build the student without memory (meta device), refuse it past `max_params`, and run
    a batch of 2 through it."""
    with torch.device("meta"):
        student = build_student(spec.student, input_shape, num_classes)
        count = sum(p.numel() for p in student.parameters())
        refusal = None if max_params is None else too_large(count, max_params, at_least=False)
        if refusal is not None:
            raise InvalidSpec(refusal)
        try:
            out = student(torch.empty(2, *input_shape))  # (2, K)
        except Exception as exc:
            raise IncompatibleModels(
                f"The {spec.student.arch} student cannot take inputs of shape "
                f"{fmt_shape(input_shape)}: {shorten(exc)}"
            ) from exc
    if tuple(out.shape) != (2, num_classes):
        raise IncompatibleModels(
            f"The student returned shape {fmt_shape(out.shape)}, expected (2, {num_classes})."
        )


def distill(
    prepared: Prepared | HFPrepared,
    out_dir: Path,
    reporter: Reporter,
    checkpointing: Checkpointing | None = None,
    cache: TeacherCache | None = None,
) -> DistillResult:
    """Train the student (and the baseline when asked), save its files, and measure the
    saved student against the teacher.

    With `checkpointing`, training resumes from the checkpoint there if one matches the
    recipe, refreshes it as it goes, and saves it when stopped (then `Cancelled` is raised).
    With `cache`, teacher outputs on fixed inputs are reused across jobs. Transformer jobs
    (HFPrepared) resume and reuse teacher outputs the same way (worker.kd.hf.engine).
    """
    from worker.kd.hf.engine import HFPrepared, distill_hf

    if isinstance(prepared, HFPrepared):
        return distill_hf(prepared, Path(out_dir), reporter, checkpointing, cache)
    report, artifacts = run_training(prepared, Path(out_dir), reporter, checkpointing, cache)
    return DistillResult(report=report, artifacts=artifacts)


def run(
    spec: JobSpec, teacher_path: Path, dataset_path: Path | None, out_dir: Path, reporter: Reporter
) -> DistillResult:
    """prepare, then distill."""
    return distill(prepare(spec, teacher_path, dataset_path), out_dir, reporter)
