"""The engine's entry points: `prepare` checks and loads a job, `distill` trains and reports.

A job is of one kind (worker.kd.spec.JobKind): `tensor` (a classifier on tensors) or
`transformer` (a Hugging Face teacher: sequence classification, sentence embedding or
causal LM). `JOBS` maps each kind to the module that prepares and distils it; both train
through the one `Trainer` (worker.kd.training) with their task's adapter (worker.kd.tasks).

`prepare` is the pipeline's "validating" stage: it fails fast, with a KDError whose message
says what to fix, before any training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from worker.kd.errors import InvalidSpec
from worker.kd.jobs import DistillResult, HFPrepared, Prepared
from worker.kd.spec import JobKind, JobSpec
from worker.kd.tasks.tensor_job import distill_tensor, prepare_tensor
from worker.kd.tasks.transformer_job import distill_hf, is_hf_teacher, prepare_hf
from worker.kd.training.checkpoint import Checkpointing
from worker.kd.training.reporting import Reporter
from worker.kd.training.teacher_cache import TeacherCache

AnyPrepared = Prepared | HFPrepared


@dataclass(frozen=True)
class JobKindEntry:
    """How a kind of job is prepared and distilled."""

    prepare: Callable[
        [JobSpec, Path, Path | None, Path | None, torch.device, int | None, Path | None],
        AnyPrepared,
    ]
    distill: Callable[
        [AnyPrepared, Path, Reporter, Checkpointing | None, TeacherCache | None], DistillResult
    ]
    prepared_type: type


def _prepare_transformer(
    spec: JobSpec,
    teacher_path: Path,
    dataset_path: Path | None,
    student_path: Path | None,
    device: torch.device,
    max_student_params: int | None,
    eval_dataset_path: Path | None = None,
) -> HFPrepared:
    return prepare_hf(spec, teacher_path, dataset_path, device, eval_dataset_path, student_path)


JOBS: dict[JobKind, JobKindEntry] = {
    "tensor": JobKindEntry(prepare_tensor, distill_tensor, Prepared),  # type: ignore[arg-type]
    "transformer": JobKindEntry(_prepare_transformer, distill_hf, HFPrepared),  # type: ignore[arg-type]
}


def job_kind(spec: JobSpec, teacher_path: Path) -> JobKind:
    """A Hugging Face model-directory ZIP teacher makes a transformer job."""
    return "transformer" if is_hf_teacher(spec, Path(teacher_path)) else "tensor"


def prepare(
    spec: JobSpec,
    teacher_path: Path,
    dataset_path: Path | None,
    student_path: Path | None = None,
    max_student_params: int | None = None,
    eval_dataset_path: Path | None = None,
) -> AnyPrepared:
    """Load and check teacher and dataset against each other and the spec. `dataset_path`
    is None for a builtin dataset; `student_path` is the file of an `arch: file` student;
    `eval_dataset_path` the file of `dataset.eval_file_id` (a causal-LM job's
    evaluation texts).

    The returned job's `spec.training` is always planned (worker.kd.budget): training
    fields the spec leaves None are chosen here, from the loaded data and the built
    student, and `plan` says how (None when the spec stated them all, as a resumed job's
    stored spec does); the Trainer and the report only ever see numbers."""
    device = resolve_device(spec.training.device)
    entry = JOBS[job_kind(spec, Path(teacher_path))]
    return entry.prepare(
        spec,
        Path(teacher_path),
        None if dataset_path is None else Path(dataset_path),
        None if student_path is None else Path(student_path),
        device,
        max_student_params,
        None if eval_dataset_path is None else Path(eval_dataset_path),
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


def distill(
    prepared: AnyPrepared,
    out_dir: Path,
    reporter: Reporter,
    checkpointing: Checkpointing | None = None,
    cache: TeacherCache | None = None,
) -> DistillResult:
    """Train the student (and the baseline when asked), save its files, and measure the
    saved student against the teacher.

    With `checkpointing`, training resumes from the checkpoint there if one matches the
    recipe, refreshes it as it goes, and saves it when stopped (then `Cancelled` is raised).
    With `cache`, teacher outputs on fixed inputs are reused across jobs.
    """
    entry = next(e for e in JOBS.values() if isinstance(prepared, e.prepared_type))
    return entry.distill(prepared, Path(out_dir), reporter, checkpointing, cache)


def run(
    spec: JobSpec, teacher_path: Path, dataset_path: Path | None, out_dir: Path, reporter: Reporter
) -> DistillResult:
    """prepare, then distill."""
    return distill(prepare(spec, teacher_path, dataset_path), out_dir, reporter)
