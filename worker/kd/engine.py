"""The engine's entry points: `prepare` checks and loads a job, `distill` trains and reports.

`prepare` is the pipeline's "validating" stage: it fails fast, with a KDError whose message
says what to fix, before any training starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.kd.checkpoint import Checkpointing, fingerprint
from worker.kd.data import Splits, load_dataset
from worker.kd.errors import IncompatibleModels, InvalidSpec
from worker.kd.evaluate import ValidationSet, count_parameters
from worker.kd.export import save_student, student_config
from worker.kd.history import RecordingReporter
from worker.kd.losses import get_loss
from worker.kd.model_card import model_card
from worker.kd.plots import plot_curves
from worker.kd.report import ModelUnderTest, build_report
from worker.kd.reporting import Reporter
from worker.kd.spec import JobSpec
from worker.kd.students import build_student
from worker.kd.teachers import load_teacher, probe_teacher
from worker.kd.text import fmt_shape, shorten
from worker.kd.train import Trainer, seed_everything


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
    dataset_path: Path


@dataclass
class DistillResult:
    report: dict[str, Any]  # exactly what is written to report.json
    artifacts: dict[str, Path]  # artifact name -> file in out_dir


def prepare(
    spec: JobSpec,
    teacher_path: Path,
    dataset_path: Path | None,
    student_path: Path | None = None,
) -> Prepared:
    """Load and check teacher and dataset against each other and the spec. `dataset_path`
    is None for a builtin dataset; `student_path` is the file of an `arch: file` student."""
    device = resolve_device(spec.training.device)
    teacher = load_teacher(Path(teacher_path)).to(device)
    if dataset_path is None:
        raise InvalidSpec("Builtin datasets are not available in this version; upload the data.")
    data = load_dataset(Path(dataset_path), spec.training.val_fraction, spec.training.seed)
    num_classes = probe_teacher(teacher, data.x_train[:2].to(device))
    check_labels_fit(data, num_classes)
    check_student_fits(spec, data.input_shape, num_classes)
    return Prepared(
        spec=spec,
        teacher=teacher,
        data=data,
        input_shape=data.input_shape,
        num_classes=num_classes,
        device=device,
        teacher_path=Path(teacher_path),
        dataset_path=Path(dataset_path),
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


def check_student_fits(spec: JobSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Build the student without memory (meta device) and run a batch of 2 through it."""
    with torch.device("meta"):
        student = build_student(spec.student, input_shape, num_classes)
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
    prepared: Prepared,
    out_dir: Path,
    reporter: Reporter,
    checkpointing: Checkpointing | None = None,
) -> DistillResult:
    """Train the student, save its files, and measure the saved student against the teacher.

    With `checkpointing`, training resumes from the checkpoint there if one matches the
    recipe, refreshes it as it goes, and saves it when stopped (then `Cancelled` is raised).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec, device = prepared.spec, prepared.device
    recorder = RecordingReporter(reporter)
    seed_everything(spec.training.seed)
    student = build_student(spec.student, prepared.input_shape, prepared.num_classes).to(device)
    val = ValidationSet.build(prepared.data, prepared.teacher, device)
    loss_fn = get_loss(
        "hinton", temperature=spec.distillation.temperature, alpha=spec.distillation.alpha
    )
    trainer = Trainer(
        student,
        prepared.teacher,
        loss_fn,
        prepared.data,
        val,
        spec.training,
        device,
        recorder,
        history=recorder.metrics,
        checkpointing=checkpointing,
        fingerprint=fingerprint(spec),
    )
    _announce(recorder, prepared, student, trainer.total_steps)
    outcome = trainer.fit()
    config = student_config(spec.student, prepared.input_shape, prepared.num_classes)
    artifacts = save_student(student, config, out_dir)
    downloaded = torch.jit.load(str(artifacts["student.pt"]), map_location=device)
    report = build_report(
        spec,
        ModelUnderTest(prepared.teacher, prepared.teacher_path),
        ModelUnderTest(downloaded, artifacts["student.pt"]),
        val,
        outcome,
        device,
    )
    artifacts["report.json"] = out_dir / "report.json"
    artifacts["report.json"].write_text(json.dumps(report, indent=2) + "\n")
    artifacts["metrics.csv"] = out_dir / "metrics.csv"
    recorder.write_csv(artifacts["metrics.csv"])
    artifacts["curves.png"] = plot_curves(
        out_dir / "curves.png", recorder.metrics, report["teacher"]["accuracy"]
    )
    artifacts["README.md"] = out_dir / "README.md"
    artifacts["README.md"].write_text(
        model_card(report, prepared.teacher_path.name, prepared.dataset_path.name)
    )
    recorder.event("training_finished", summarize(report), _headline(report))
    return DistillResult(report=report, artifacts=artifacts)


def run(
    spec: JobSpec, teacher_path: Path, dataset_path: Path, out_dir: Path, reporter: Reporter
) -> DistillResult:
    """prepare, then distill."""
    return distill(prepare(spec, teacher_path, dataset_path), out_dir, reporter)


def _announce(reporter: Reporter, prepared: Prepared, student: nn.Module, steps: int) -> None:
    spec, data = prepared.spec, prepared.data
    labels = "labels and teacher" if data.y_train is not None else "teacher only (no labels)"
    reporter.event(
        "training_started",
        f"Training a {spec.student.arch} student ({count_parameters(student):,} parameters) "
        f"for {spec.training.epochs} epochs ({steps} steps) on {prepared.device.type}, "
        f"from {labels}.",
        {
            "student_parameters": count_parameters(student),
            "teacher_parameters": count_parameters(prepared.teacher),
            "epochs": spec.training.epochs,
            "steps": steps,
            "train_samples": len(data.x_train),
            "val_samples": len(data.x_val),
            "labels_used": data.y_train is not None,
            "device": prepared.device.type,
        },
    )


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("agreement", "quality_retained", "size_reduction", "speedup")
    return {
        "student_accuracy": report["student"]["accuracy"],
        "teacher_accuracy": report["teacher"]["accuracy"],
        **{key: report[key] for key in keys},
    }


def summarize(report: dict[str, Any]) -> str:
    """One sentence for the event log: accuracy kept, size and speed."""
    labels = "" if report["validation"]["labels"] == "dataset" else " (against teacher labels)"
    parts = [
        f"Student accuracy {report['student']['accuracy']:.4f} vs teacher "
        f"{report['teacher']['accuracy']:.4f}{labels}"
    ]
    if report["size_reduction"] is not None:
        parts.append(f"{report['size_reduction']:.1%} fewer parameters")
    if report["speedup"] is not None:
        parts.append(f"{report['speedup']:.2f}x the teacher's speed at batch 1")
    return "; ".join(parts) + "."
