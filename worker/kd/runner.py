"""What `distill` does, in order: build the loss and the teacher's outputs, train the
student (and the teacher-free baseline), save the files, measure, write the report."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from worker.kd.augment import Augmenter
from worker.kd.cache import TeacherCache, TeacherOutputs, cache_key, file_sha256
from worker.kd.checkpoint import Checkpointing, fingerprint
from worker.kd.errors import InvalidSpec
from worker.kd.evaluate import ValidationSet, count_parameters
from worker.kd.export import export_onnx, save_student, student_config
from worker.kd.features import module_features
from worker.kd.history import RecordingReporter
from worker.kd.losses import build_loss_terms, shape_key
from worker.kd.model_card import model_card
from worker.kd.plots import plot_curves
from worker.kd.report import ModelUnderTest, build_report
from worker.kd.reporting import Reporter
from worker.kd.students import build_student, load_file_student
from worker.kd.text import shorten
from worker.kd.train import Objective, TeacherBatch, Trainer, TrainOutcome, seed_everything

if TYPE_CHECKING:
    from worker.kd.engine import Prepared

BASELINE = "baseline_"
TEACHER_BATCH = 1024


def run_training(
    prepared: Prepared,
    out_dir: Path,
    reporter: Reporter,
    checkpointing: Checkpointing | None,
    cache: TeacherCache | None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    spec, device = prepared.spec, prepared.device
    recorder = RecordingReporter(reporter)
    val = ValidationSet.build(prepared.data, prepared.teacher, device)
    baseline_wanted = spec.baseline and prepared.data.y_train is not None
    share = 0.5 if baseline_wanted else 1.0
    student, outcome = _train_student(prepared, val, recorder, checkpointing, cache, share)
    baseline: tuple[nn.Module, TrainOutcome] | None = None
    if baseline_wanted:
        baseline = _train_baseline(prepared, val, recorder, checkpointing)
    elif spec.baseline:
        recorder.event("baseline_skipped", "No baseline: the dataset has no labels to train on.")
    return _write_outputs(prepared, val, recorder, out_dir, student, outcome, baseline)


# The objective and the teacher ---------------------------------------------------------


def build_objective(prepared: Prepared, student: nn.Module, *, baseline: bool = False) -> Objective:
    """The job's loss terms (the default recipe when the spec names none), checked against
    the layers' real shapes; or, for the baseline, cross-entropy alone."""
    spec, labeled = prepared.spec, prepared.data.y_train is not None
    if baseline:
        terms: list[dict[str, Any]] = [{"kind": "ce"}]
    elif spec.distillation.losses:
        terms = [term.model_dump(exclude_none=True) for term in spec.distillation.losses]
    else:
        alpha = spec.distillation.alpha if labeled else 1.0
        terms = [
            {
                "kind": "kd",
                "weight": alpha,
                "params": {"temperature": spec.distillation.temperature},
            }
        ]
        if labeled and alpha < 1.0:
            terms.append({"kind": "ce", "weight": 1.0 - alpha})
    shapes = _layer_shapes(prepared, student, terms)
    try:
        loss = build_loss_terms(terms, shapes, has_labels=labeled)
    except ValueError as exc:
        raise InvalidSpec(f"distillation.losses: {exc}") from exc
    needs_teacher = any(term["kind"] != "ce" for term in terms)
    return Objective(loss.to(prepared.device), needs_teacher)


def _layer_shapes(
    prepared: Prepared, student: nn.Module, terms: Sequence[dict[str, Any]]
) -> dict[str, tuple[int, ...]]:
    """Per-sample output shapes of the layers the terms name, from one small batch."""
    student_layers = sorted({t["student_layer"] for t in terms if t.get("student_layer")})
    teacher_layers = sorted({t["teacher_layer"] for t in terms if t.get("teacher_layer")})
    if not student_layers and not teacher_layers:
        return {}
    x = prepared.data.x_train[:2].to(prepared.device)  # (2, *input_shape)
    shapes: dict[str, tuple[int, ...]] = {}
    student.eval()
    with torch.no_grad():
        _, s_feats = module_features(student, x, student_layers)
        _, t_feats = teacher_forward(prepared.teacher, x, teacher_layers)
    shapes.update({shape_key("student", k): tuple(v.shape[1:]) for k, v in s_feats.items()})
    shapes.update({shape_key("teacher", k): tuple(v.shape[1:]) for k, v in t_feats.items()})
    return shapes


def teacher_forward(
    teacher: Any, x: torch.Tensor, layers: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits (B, K) and the named layers' outputs, whatever the teacher's format."""
    if not layers:
        return teacher(x), {}
    features = getattr(teacher, "features", None)
    if callable(features):
        logits, feats = features(x, list(layers))
        return logits, dict(feats)
    return module_features(teacher, x, layers)


@dataclass
class OnlineTeacher:
    """Runs the teacher on each batch (needed when the batch is augmented)."""

    teacher: Any
    layers: tuple[str, ...]

    def __call__(self, idx: torch.Tensor, x: torch.Tensor, augmented: bool) -> TeacherBatch:
        with torch.no_grad():
            logits, feats = teacher_forward(self.teacher, x, self.layers)
        return logits.float(), {k: v.float() for k, v in feats.items()}


@dataclass
class CachedTeacher:
    """Teacher outputs computed once for the training set, indexed per batch; falls back
    to running the teacher for augmented batches."""

    outputs: TeacherOutputs
    online: OnlineTeacher
    device: torch.device

    def __call__(self, idx: torch.Tensor, x: torch.Tensor, augmented: bool) -> TeacherBatch:
        if augmented:
            return self.online(idx, x, augmented)
        return self.outputs.batch(idx, self.device)


def compute_outputs(prepared: Prepared, layers: Sequence[str]) -> TeacherOutputs:
    x = prepared.data.x_train
    logits, feats = [], []
    with torch.no_grad():
        for start in range(0, len(x), TEACHER_BATCH):
            batch = x[start : start + TEACHER_BATCH].to(prepared.device)
            out, f = teacher_forward(prepared.teacher, batch, layers)
            logits.append(out.float().cpu())
            feats.append({k: v.float().cpu() for k, v in f.items()})
    return TeacherOutputs(
        torch.cat(logits), {name: torch.cat([f[name] for f in feats]) for name in layers}
    )


def teacher_source(
    prepared: Prepared, objective: Objective, reporter: Reporter, cache: TeacherCache | None
) -> OnlineTeacher | CachedTeacher:
    layers = objective.loss.teacher_layers
    online = OnlineTeacher(prepared.teacher, layers)
    spec = prepared.spec
    if not spec.distillation.cache_teacher or spec.distillation.augment.active:
        return online
    key = _cache_key(prepared, layers) if cache is not None else ""
    started = time.perf_counter()
    outputs = cache.get(key, layers) if cache is not None else None
    source = "reused from an earlier job"
    if outputs is None or len(outputs.logits) != len(prepared.data.x_train):
        outputs = compute_outputs(prepared, layers)
        source = "computed once for this job"
        if cache is not None:
            cache.put(key, outputs)
    seconds = time.perf_counter() - started
    reporter.event(
        "teacher_cache",
        f"Teacher outputs for {len(outputs.logits)} samples {source} ({seconds:.2f} s).",
        {"source": source, "seconds": seconds, "bytes": outputs.nbytes, "layers": list(layers)},
    )
    return CachedTeacher(outputs, online, prepared.device)


def _cache_key(prepared: Prepared, layers: Sequence[str]) -> str:
    spec = prepared.spec
    dataset = (
        f"builtin:{spec.dataset.builtin}"
        if prepared.dataset_path is None
        else file_sha256(prepared.dataset_path)
    )
    return cache_key(
        {
            "teacher": file_sha256(prepared.teacher_path),
            "teacher_format": spec.teacher.format,
            "dataset": dataset,
            "dataset_spec": spec.dataset.model_dump(mode="json", exclude={"file_id"}),
            "split": [spec.training.val_fraction, spec.training.seed, prepared.data.source],
            "layers": list(layers),
        }
    )


# Training -------------------------------------------------------------------------------


@dataclass
class _ScaledProgress:
    """Maps one run's progress into its share of the job's (KD run, then baseline)."""

    inner: Reporter
    offset: float
    share: float

    def progress(self, fraction: float, *, epoch: int, step: int) -> None:
        self.inner.progress(self.offset + self.share * fraction, epoch=epoch, step=step)

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
        self.inner.metric(name, value, step=step, epoch=epoch)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.inner.event(kind, message, data)

    def should_stop(self) -> bool:
        return self.inner.should_stop()


def _new_student(prepared: Prepared) -> nn.Module:
    seed_everything(prepared.spec.training.seed)
    if prepared.student_path is not None:
        return load_file_student(prepared.student_path).to(prepared.device)
    spec = prepared.spec
    return build_student(spec.student, prepared.input_shape, prepared.num_classes).to(
        prepared.device
    )


def _train_student(
    prepared: Prepared,
    val: ValidationSet,
    recorder: RecordingReporter,
    checkpointing: Checkpointing | None,
    cache: TeacherCache | None,
    share: float,
) -> tuple[nn.Module, TrainOutcome]:
    spec = prepared.spec
    student = _new_student(prepared)
    objective = build_objective(prepared, student)
    teacher = teacher_source(prepared, objective, recorder, cache)
    trainer = Trainer(
        student, objective, teacher, prepared.data, val, spec.training, prepared.device,
        _ScaledProgress(recorder, 0.0, share),
        augmenter=Augmenter(spec.distillation.augment, prepared.num_classes, spec.training.seed),
        history=recorder.metrics, checkpointing=checkpointing, fingerprint=fingerprint(spec),
    )  # fmt: skip
    _announce(recorder, prepared, student, trainer.total_steps, objective)
    return student, trainer.fit()


def _train_baseline(
    prepared: Prepared,
    val: ValidationSet,
    recorder: RecordingReporter,
    checkpointing: Checkpointing | None,
) -> tuple[nn.Module, TrainOutcome]:
    """The same student, budget and seed, trained on labels alone: what the teacher adds."""
    spec = prepared.spec
    student = _new_student(prepared)
    objective = build_objective(prepared, student, baseline=True)
    baseline_checkpoint = None
    if checkpointing is not None:
        path = checkpointing.path.with_name(f"baseline-{checkpointing.path.name}")
        baseline_checkpoint = Checkpointing(path, checkpointing.every_steps)
    trainer = Trainer(
        student, objective, None, prepared.data, val, spec.training, prepared.device,
        _ScaledProgress(recorder, 0.5, 0.5),
        augmenter=Augmenter(spec.distillation.augment, prepared.num_classes, spec.training.seed),
        history=recorder.metrics, checkpointing=baseline_checkpoint,
        fingerprint=fingerprint(spec) + ":baseline", metric_prefix=BASELINE,
    )  # fmt: skip
    recorder.event(
        "baseline_started",
        f"Training the same {spec.student.arch} student without the teacher "
        f"({trainer.total_steps} steps, same seed), to measure what distillation adds.",
    )
    return student, trainer.fit()


def _announce(
    reporter: Reporter, prepared: Prepared, student: nn.Module, steps: int, objective: Objective
) -> None:
    spec, data = prepared.spec, prepared.data
    labels = "labels and teacher" if data.y_train is not None else "teacher only (no labels)"
    terms = [f"{t.weight:g}*{t.name}" for t in objective.loss.terms]
    reporter.event(
        "training_started",
        f"Training a {spec.student.arch} student ({count_parameters(student):,} parameters) "
        f"for {spec.training.epochs} epochs ({steps} steps) on {prepared.device.type}, "
        f"from {labels}; loss {' + '.join(terms)}.",
        {
            "student_parameters": count_parameters(student),
            "teacher_parameters": int(getattr(prepared.teacher, "num_parameters", 0))
            or count_parameters(prepared.teacher),
            "epochs": spec.training.epochs,
            "steps": steps,
            "train_samples": len(data.x_train),
            "val_samples": len(data.x_val),
            "labels_used": data.y_train is not None,
            "device": prepared.device.type,
            "loss": terms,
        },
    )


# Outputs --------------------------------------------------------------------------------


def _write_outputs(
    prepared: Prepared,
    val: ValidationSet,
    recorder: RecordingReporter,
    out_dir: Path,
    student: nn.Module,
    outcome: TrainOutcome,
    baseline: tuple[nn.Module, TrainOutcome] | None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    spec = prepared.spec
    config = student_config(spec.student, prepared.input_shape, prepared.num_classes)
    artifacts = save_student(student, config, out_dir)
    artifacts.update(_export_onnx(student, val, out_dir, recorder))
    downloaded = torch.jit.load(str(artifacts["student.pt"]), map_location=prepared.device)
    baseline_model = None
    if baseline is not None:
        baseline_path = out_dir / "baseline.pt"
        torch.jit.script(baseline[0].cpu().eval()).save(str(baseline_path))
        baseline_model = (
            ModelUnderTest(
                torch.jit.load(str(baseline_path), map_location=prepared.device), baseline_path
            ),
            baseline[1],
        )
    report = build_report(
        spec,
        ModelUnderTest(prepared.teacher, prepared.teacher_path),
        ModelUnderTest(downloaded, artifacts["student.pt"]),
        val,
        outcome,
        prepared.device,
        baseline=baseline_model,
        onnx_max_abs_diff=recorder.onnx_max_abs_diff,
    )
    artifacts["report.json"] = out_dir / "report.json"
    artifacts["report.json"].write_text(json.dumps(report, indent=2) + "\n")
    artifacts["metrics.csv"] = out_dir / "metrics.csv"
    recorder.write_csv(artifacts["metrics.csv"])
    student_rows = [m for m in recorder.metrics if not m[0].startswith(BASELINE)]
    baseline_rows = [
        (m[0].removeprefix(BASELINE), *m[1:]) for m in recorder.metrics if m[0].startswith(BASELINE)
    ]
    artifacts["curves.png"] = plot_curves(
        out_dir / "curves.png", student_rows, report["teacher"]["accuracy"], baseline_rows or None
    )
    artifacts["README.md"] = out_dir / "README.md"
    artifacts["README.md"].write_text(
        model_card(report, prepared.teacher_path.name, prepared.dataset_name)
    )
    recorder.event("training_finished", summarize(report), _headline(report))
    return report, artifacts


def _export_onnx(
    student: nn.Module, val: ValidationSet, out_dir: Path, recorder: RecordingReporter
) -> dict[str, Path]:
    """student.onnx, checked against the torch student; a failed export is reported, not
    fatal (the other formats stand)."""
    path = out_dir / "student.onnx"
    try:
        recorder.onnx_max_abs_diff = export_onnx(student.cpu().eval(), val.x[:64], path)
    except Exception as exc:
        recorder.event("onnx_export_failed", f"student.onnx was not written: {shorten(exc)}")
        path.unlink(missing_ok=True)
        return {}
    return {"student.onnx": path}


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("agreement", "quality_retained", "size_reduction", "speedup", "kd_gain")
    return {
        "student_accuracy": report["student"]["accuracy"],
        "teacher_accuracy": report["teacher"]["accuracy"],
        **{key: report[key] for key in keys},
    }


def summarize(report: dict[str, Any]) -> str:
    """One sentence for the event log: accuracy kept, size and speed, and the gain."""
    labels = "" if report["validation"]["labels"] == "dataset" else " (against teacher labels)"
    parts = [
        f"Student accuracy {report['student']['accuracy']:.4f} vs teacher "
        f"{report['teacher']['accuracy']:.4f}{labels}"
    ]
    if report["size_reduction"] is not None:
        parts.append(f"{report['size_reduction']:.1%} fewer parameters")
    if report["speedup"] is not None:
        parts.append(f"{report['speedup']:.2f}x the teacher's speed at batch 1")
    if report["kd_gain"] is not None:
        parts.append(f"{report['kd_gain']:+.4f} accuracy over the baseline without a teacher")
    return "; ".join(parts) + "."
