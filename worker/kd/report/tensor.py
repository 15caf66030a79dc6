"""A tensor classifier's report (report.json): what the student kept, measured, never assumed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.kd.report.schema import REPORT_SCHEMA_VERSION, TensorReport
from worker.kd.report.summary import ratio
from worker.kd.report.verdict import decide, no_verdict
from worker.kd.spec import JobSpec
from worker.kd.training.evaluate import (
    ValidationSet,
    accuracy,
    agreement,
    count_parameters,
    kl_teacher_student,
    paired_latency_ms,
    predict_logits,
    top_k_accuracy,
)
from worker.kd.training.trainer import TrainOutcome

THROUGHPUT_BATCH = 64


@dataclass
class ModelUnderTest:
    """A model as the user gets it: the module loaded from its file, and that file."""

    module: nn.Module
    path: Path


def tensor_report(
    spec: JobSpec,
    teacher: ModelUnderTest,
    student: ModelUnderTest,
    val: ValidationSet,
    outcome: TrainOutcome,
    device: torch.device,
    *,
    baseline: tuple[ModelUnderTest, TrainOutcome] | None = None,
    onnx_max_abs_diff: float | None = None,
    layer_pairing: list[dict[str, Any]] | None = None,
    selection: dict[str, Any] | None = None,
    no_verdict_reason: str | None = None,
    processes: int = 1,
) -> TensorReport:
    """report.json; accuracies are on `val`, the evaluation split (used for no choice),
    against `val.label_source` labels; `selection` names the split that chose. Teacher,
    student (and baseline) are timed in turn, so all meet the same machine load. With a
    baseline, `verdict` judges student against baseline on the same samples."""
    models = [teacher, student] + ([baseline[0]] if baseline else [])
    logits = [val.teacher_logits] + [
        predict_logits(m.module, val.x, device) for m in models[1:]
    ]  # each (M, K)
    batch1 = paired_latency_ms([m.module for m in models], val.x[:1], device)
    big = val.x[:THROUGHPUT_BATCH]
    batch64 = paired_latency_ms([m.module for m in models], big, device, runs=11)
    summaries = [
        model_summary(m, out, val, b1, b64, len(big))
        for m, out, b1, b64 in zip(models, logits, batch1, batch64, strict=True)
    ]
    t, s = summaries[0], summaries[1]
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "tensor_classification",
        "validation": {"source": val.source, "samples": len(val.x), "labels": val.label_source},
        "evaluation": {
            "split": "carved" if val.source == "split" else val.source,
            "samples": len(val.x),
            "selection": selection,
        },
        "input_shape": list(val.x.shape[1:]),
        "num_classes": int(val.teacher_logits.shape[1]),
        "teacher": t,
        "student": {"arch": spec.student.arch, **s},
        "agreement": agreement(logits[1], val.teacher_logits),
        "kl_teacher_student": kl_teacher_student(logits[1], val.teacher_logits),
        "quality_retained": ratio(s["accuracy"], t["accuracy"]),
        "size_reduction": _reduction(s["parameters"], t["parameters"]),
        "speedup": ratio(t["latency_ms_batch1"], s["latency_ms_batch1"]),
        "speedup_batch64": ratio(t["latency_ms_batch64"], s["latency_ms_batch64"]),
        "device": device.type,
        "epochs": outcome.epochs,
        "steps": outcome.steps,
        "best_epoch": outcome.best_epoch,
        "stopped_early": outcome.stopped_early,
        "train_seconds": round(outcome.seconds, 3),
        "processes": processes,
        "recipe": recipe(spec, outcome.used_labels),
        "onnx_max_abs_diff": onnx_max_abs_diff,
        **({"layer_pairing": layer_pairing} if layer_pairing else {}),
        # A gain is claimed only when the baseline was trained and measured in this job.
        "baseline": None,
        "kd_gain": None,
    }
    if baseline is None and no_verdict_reason is not None:
        report["verdict"] = no_verdict(no_verdict_reason)
    if baseline is not None:
        b = summaries[2]
        report["baseline"] = {
            **b,
            "agreement": agreement(logits[2], val.teacher_logits),
            "epochs": baseline[1].epochs,
            "train_seconds": round(baseline[1].seconds, 3),
        }
        report["kd_gain"] = s["accuracy"] - b["accuracy"]
        report["verdict"] = decide(
            _correct(logits[1], val.labels),
            _correct(logits[2], val.labels),
            report["kd_gain"],
            spec.keep,
        )
    return TensorReport.model_validate(report)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> list[bool]:
    """Per sample, whether the model's top-1 class is the label: logits (M, K), labels (M,)."""
    return [bool(v) for v in (logits.argmax(dim=1) == labels).tolist()]


def model_summary(
    model: ModelUnderTest,
    logits: torch.Tensor,
    val: ValidationSet,
    latency_batch1: float,
    latency_batch64: float,
    batch: int,
) -> dict[str, Any]:
    parameters = int(getattr(model.module, "num_parameters", 0)) or count_parameters(model.module)
    summary: dict[str, Any] = {
        "accuracy": accuracy(logits, val.labels),
        "parameters": parameters,
        "serialized_bytes": model.path.stat().st_size,
        "latency_ms_batch1": latency_batch1,
        "latency_ms_batch64": latency_batch64,
        "throughput_per_s": batch / (latency_batch64 / 1000) if latency_batch64 else None,
    }
    if logits.shape[1] > 5:
        summary["top5_accuracy"] = top_k_accuracy(logits, val.labels, 5)
    return summary


def recipe(spec: JobSpec, used_labels: bool) -> dict[str, Any]:
    """How the student was trained, enough to reproduce it."""
    distillation = spec.distillation
    return {
        "losses": [term.model_dump(exclude_none=True) for term in distillation.losses]
        if distillation.losses
        else "default",
        "temperature": distillation.temperature,
        "alpha": distillation.alpha if used_labels else 1.0,
        "augment": distillation.augment.model_dump(),
        "labels_used": used_labels,
        "student": spec.student.model_dump(mode="json"),
        "optimizer": "adamw",
        **spec.training.model_dump(mode="json", exclude={"device", "max_runtime_seconds"}),
    }


def _reduction(student: int, teacher: int) -> float | None:
    return 1 - student / teacher if teacher else None
