"""The comparison report (report.json): what the student kept, measured, never assumed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.kd.evaluate import (
    ValidationSet,
    accuracy,
    agreement,
    count_parameters,
    kl_teacher_student,
    paired_latency_ms,
    predict_logits,
)
from worker.kd.spec import JobSpec
from worker.kd.train import GRAD_CLIP, TrainOutcome

REPORT_SCHEMA_VERSION = 1


@dataclass
class ModelUnderTest:
    """A model as the user gets it: the module loaded from its file, and that file."""

    module: nn.Module
    path: Path


def build_report(
    spec: JobSpec,
    teacher: ModelUnderTest,
    student: ModelUnderTest,
    val: ValidationSet,
    outcome: TrainOutcome,
    device: torch.device,
) -> dict[str, Any]:
    """report.json; accuracies are on `val`, against `val.label_source` labels."""
    student_logits = predict_logits(student.module, val.x, device)  # (M, K)
    latencies = paired_latency_ms([teacher.module, student.module], val.x[:1], device)
    t = model_summary(teacher, val.teacher_logits, val, latencies[0])
    s = model_summary(student, student_logits, val, latencies[1])
    validation = {"source": val.source, "samples": len(val.x), "labels": val.label_source}
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "validation": validation,
        "input_shape": list(val.x.shape[1:]),
        "num_classes": int(val.teacher_logits.shape[1]),
        "teacher": t,
        "student": {"arch": spec.student.arch, **s},
        "agreement": agreement(student_logits, val.teacher_logits),
        "kl_teacher_student": kl_teacher_student(student_logits, val.teacher_logits),
        "quality_retained": _ratio(s["accuracy"], t["accuracy"]),
        "size_reduction": _reduction(s["parameters"], t["parameters"]),
        "speedup": _ratio(t["latency_ms_batch1"], s["latency_ms_batch1"]),
        "device": device.type,
        "epochs": outcome.epochs,
        "steps": outcome.steps,
        "train_seconds": round(outcome.seconds, 3),
        "recipe": recipe(spec, outcome.used_labels),
        # No student was trained without the teacher in this run, so no gain is claimed.
        "baseline": None,
        "kd_gain": None,
    }


def model_summary(
    model: ModelUnderTest, logits: torch.Tensor, val: ValidationSet, latency_ms: float
) -> dict[str, Any]:
    return {
        "accuracy": accuracy(logits, val.labels),
        "parameters": count_parameters(model.module),
        "serialized_bytes": model.path.stat().st_size,
        "latency_ms_batch1": latency_ms,
    }


def recipe(spec: JobSpec, used_labels: bool) -> dict[str, Any]:
    """How the student was trained, enough to reproduce it."""
    return {
        "loss": "hinton",
        "temperature": spec.distillation.temperature,
        "alpha": spec.distillation.alpha if used_labels else 1.0,
        "labels_used": used_labels,
        "student": spec.student.model_dump(mode="json"),
        "optimizer": "adamw",
        "learning_rate": spec.training.learning_rate,
        "weight_decay": spec.training.weight_decay,
        "schedule": "cosine",
        "grad_clip": GRAD_CLIP,
        "batch_size": spec.training.batch_size,
        "epochs": spec.training.epochs,
        "seed": spec.training.seed,
        "val_fraction": spec.training.val_fraction,
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _reduction(student: int, teacher: int) -> float | None:
    return 1 - student / teacher if teacher else None
