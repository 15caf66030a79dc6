"""A transformer job: `prepare_hf` loads and checks it, `distill_hf` trains the student,
saves it (Hugging Face directory ZIP, ONNX) and writes the report. `worker.kd.engine`
calls these when the teacher is a model-directory ZIP. Transformer jobs do not resume from
checkpoints: a job handed back restarts its (short) training."""

from __future__ import annotations

import json
import math
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from worker.kd.errors import Cancelled, IncompatibleModels, InvalidSpec
from worker.kd.hf import measure
from worker.kd.hf.data import Encoded, encode_splits, read_examples
from worker.kd.hf.export import export_onnx
from worker.kd.hf.layout import is_model_zip
from worker.kd.hf.models import (
    LoadedTeacher,
    build_student,
    choose_layers,
    config_of,
    count_parameters,
    forward,
    load_teacher,
    num_layers,
    save_student,
)
from worker.kd.hf.objective import TransformerObjective, build_objective, layer_map
from worker.kd.history import RecordingReporter
from worker.kd.reporting import Reporter
from worker.kd.spec import FromTeacherStudent, JobSpec
from worker.kd.train import seed_everything

if TYPE_CHECKING:
    from worker.kd.engine import DistillResult

REPORT_SCHEMA_VERSION = 1
METRIC_EVERY = 5  # steps between train_loss metrics


@dataclass
class HFPrepared:
    """A transformer job checked and loaded, ready to train."""

    spec: JobSpec
    teacher: LoadedTeacher
    student: nn.Module
    objective: TransformerObjective
    train: Encoded
    val: Encoded
    device: torch.device
    teacher_path: Path
    dataset_path: Path | None

    @property
    def task(self) -> str:
        return self.teacher.task


def is_hf_teacher(spec: JobSpec, teacher_path: Path) -> bool:
    return spec.teacher.format == "hf_zip" or (
        spec.teacher.format == "auto" and is_model_zip(Path(teacher_path))
    )


def prepare_hf(
    spec: JobSpec, teacher_path: Path, dataset_path: Path | None, device: torch.device
) -> HFPrepared:
    examples = read_examples(spec.dataset, dataset_path)
    teacher = load_teacher(Path(teacher_path), spec.teacher.task)
    try:
        if spec.teacher.task not in (None, teacher.task):
            raise InvalidSpec(
                f"teacher.task is {spec.teacher.task!r} but the model directory is a "
                f"{teacher.task} model."
            )
        train, val = encode_splits(
            examples, teacher.tokenizer, spec.dataset.max_length,
            spec.training.val_fraction, spec.training.seed,
        )  # fmt: skip
        _check_labels(teacher, train, val)
        seed_everything(spec.training.seed)
        student = build_student(spec.student, teacher.model)
        kept = (
            choose_layers(spec.student, num_layers(teacher.model))
            if isinstance(spec.student, FromTeacherStudent)
            else None
        )
        mapping = layer_map(num_layers(student), num_layers(teacher.model), kept)
        labeled = train.labels is not None and teacher.task == "sequence_classification"
        objective = build_objective(
            spec, teacher.task, labeled, config_of(student), config_of(teacher.model), mapping
        )
    except BaseException:
        teacher.cleanup()
        raise
    return HFPrepared(
        spec, teacher, student.to(device), objective.to(device), train, val, device,
        Path(teacher_path), None if dataset_path is None else Path(dataset_path),
    )  # fmt: skip


def _check_labels(teacher: LoadedTeacher, train: Encoded, val: Encoded) -> None:
    if teacher.task != "sequence_classification":
        return
    classes = int(config_of(teacher.model).num_labels)
    present = [y for y in (train.labels, val.labels) if y is not None and len(y)]
    top = max((int(y.max()) for y in present), default=-1)
    if top >= classes:
        raise IncompatibleModels(
            f"The dataset has labels up to {top} but the teacher classifies into {classes} "
            f"classes; labels must be in [0, {classes})."
        )


def distill_hf(prepared: HFPrepared, out_dir: Path, reporter: Reporter) -> DistillResult:
    from worker.kd.engine import DistillResult

    out_dir.mkdir(parents=True, exist_ok=True)
    recorder = RecordingReporter(reporter)
    prepared.teacher.model.to(prepared.device)
    try:
        _announce(prepared, recorder)
        outcome = train(prepared, recorder)
        report, artifacts = _write_outputs(prepared, out_dir, recorder, outcome)
    finally:
        prepared.teacher.cleanup()
    return DistillResult(report=report, artifacts=artifacts)


# Training ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    epochs: int
    steps: int
    seconds: float


def train(prepared: HFPrepared, reporter: Reporter) -> Outcome:
    """AdamW with warmup and cosine decay; nanoGPT's step order (clip, step, zero_grad)."""
    spec = prepared.spec.training
    student, objective, data = prepared.student, prepared.objective, prepared.train
    params = [p for p in [*student.parameters(), *objective.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    per_epoch = math.ceil(len(data) / spec.batch_size)
    total = per_epoch * spec.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(total, spec))
    generator = torch.Generator().manual_seed(spec.seed)
    started, step = time.perf_counter(), 0
    for epoch in range(1, spec.epochs + 1):
        student.train()
        order = torch.randperm(len(data), generator=generator).tolist()
        for start in range(0, len(order), spec.batch_size):
            if reporter.should_stop():
                raise Cancelled()
            idx = order[start : start + spec.batch_size]
            loss, parts = _step_loss(prepared, idx)
            loss.backward()
            if spec.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, spec.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % METRIC_EVERY == 0 or step == total:
                reporter.metric("train_loss", float(loss.detach()), step=step, epoch=epoch)
                for name, value in parts.items():
                    reporter.metric(f"loss_{name}", value, step=step, epoch=epoch)
            reporter.progress(step / total, epoch=epoch, step=step)
        _validate(prepared, reporter, step, epoch)
    return Outcome(spec.epochs, step, time.perf_counter() - started)


def _lr_factor(total: int, spec: Any) -> Any:
    warmup = max(1, round(total * spec.warmup_fraction))

    def factor(step: int) -> float:
        if spec.schedule == "constant":
            return 1.0
        if step < warmup and spec.schedule != "cosine":
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))

    return factor


def _step_loss(prepared: HFPrepared, idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
    objective, task, layout = prepared.objective, prepared.task, prepared.teacher.layout
    batch = prepared.train.batch(idx, prepared.teacher.tokenizer, prepared.device)
    hidden, attentions = objective.needs_hidden, objective.needs_attentions
    with torch.no_grad():
        teacher_out = forward(prepared.teacher.model, task, batch, layout,
                              hidden=hidden, attentions=attentions)  # fmt: skip
    student_out = forward(prepared.student, task, batch, layout,
                          hidden=hidden, attentions=attentions)  # fmt: skip
    labels = None if prepared.train.labels is None else prepared.train.labels[idx]
    return objective(student_out, teacher_out, batch, None if labels is None else
                     labels.to(prepared.device))  # fmt: skip


def _validate(prepared: HFPrepared, reporter: Reporter, step: int, epoch: int) -> None:
    teacher, student = _predictions(prepared)
    value = measure.quality(prepared.task, student, teacher)
    reporter.metric("val_accuracy", value, step=step, epoch=epoch)
    if prepared.task == "sentence_embedding":
        cosine = measure.mean_cosine(torch.cat(student.outputs), torch.cat(teacher.outputs))
        reporter.metric("val_cosine", cosine, step=step, epoch=epoch)


def _predictions(prepared: HFPrepared) -> tuple[measure.ValOutputs, measure.ValOutputs]:
    t = prepared.teacher
    args = (prepared.task, prepared.val, t.tokenizer, t.layout, prepared.device)
    return measure.predict(t.model, *args), measure.predict(prepared.student, *args)


def _announce(prepared: HFPrepared, reporter: Reporter) -> None:
    spec = prepared.spec
    terms = [f"{t.weight:g}*{t.name}" for t in prepared.objective.terms]
    student_params = count_parameters(prepared.student)
    reporter.event(
        "training_started",
        f"Distilling a {prepared.task} transformer into a {spec.student.arch} student "
        f"({num_layers(prepared.student)} layers, {student_params:,} parameters) for "
        f"{spec.training.epochs} epochs on {prepared.device.type}; loss {' + '.join(terms)}.",
        {
            "task": prepared.task,
            "student_parameters": student_params,
            "teacher_parameters": count_parameters(prepared.teacher.model),
            "train_samples": len(prepared.train),
            "val_samples": len(prepared.val),
            "labels_used": prepared.train.labels is not None,
            "loss": terms,
            "resume": "transformer jobs restart rather than resume from a checkpoint",
        },
    )


# Outputs ----------------------------------------------------------------------------------


def _write_outputs(
    prepared: HFPrepared, out_dir: Path, recorder: RecordingReporter, outcome: Outcome
) -> tuple[dict[str, Any], dict[str, Path]]:
    student_dir = out_dir / "student"
    shutil.rmtree(student_dir, ignore_errors=True)
    prepared.student.eval()
    save_student(prepared.student, prepared.teacher, student_dir)
    artifacts = {"student.zip": zip_directory(student_dir, out_dir / "student.zip")}
    artifacts.update(export_onnx(prepared, out_dir, recorder))
    report = build_report(prepared, outcome, recorder.onnx_max_abs_diff)
    artifacts["report.json"] = out_dir / "report.json"
    artifacts["report.json"].write_text(json.dumps(report, indent=2) + "\n")
    artifacts["metrics.csv"] = out_dir / "metrics.csv"
    recorder.write_csv(artifacts["metrics.csv"])
    artifacts["README.md"] = out_dir / "README.md"
    artifacts["README.md"].write_text(model_card(report))
    recorder.event("training_finished", summarize(report), {
        k: report[k] for k in ("quality_retained", "size_reduction", "speedup", "speedup_batch32")
    })  # fmt: skip
    shutil.rmtree(student_dir, ignore_errors=True)
    return report, artifacts


def zip_directory(directory: Path, path: Path) -> Path:
    """The directory's files at the root of a ZIP (unzip it and `from_pretrained` it)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(directory.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(directory).as_posix())
    return path


def build_report(
    prepared: HFPrepared, outcome: Outcome, onnx_max_abs_diff: float | None
) -> dict[str, Any]:
    """report.json: the DistilBERT triple (quality retained, parameter reduction, speed-up
    at batch 1 and 32 for a stated sequence length), measured here."""
    task, teacher = prepared.task, prepared.teacher
    t_out, s_out = _predictions(prepared)
    t_quality, s_quality = measure.quality(task, t_out, t_out), measure.quality(task, s_out, t_out)
    t_params, s_params = count_parameters(teacher.model), count_parameters(prepared.student)
    length = prepared.spec.dataset.max_length
    timings = measure.speed(
        measure.TaskModule(teacher.model, task, teacher.layout),
        measure.TaskModule(prepared.student, task, teacher.layout),
        int(teacher.tokenizer.vocab_size), length, prepared.device,
    )  # fmt: skip
    labels = "dataset" if t_out.targets and task != "causal_lm" else "teacher"
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "transformer",
        "task": task,
        "quality_metric": measure.QUALITY_METRICS[task],
        "validation": {"samples": len(prepared.val), "labels": labels},
        "sequence_length": length,
        "teacher": _summary(teacher.model, t_quality, t_params, timings["teacher"]),
        "student": {
            "arch": prepared.spec.student.arch,
            **_summary(prepared.student, s_quality, s_params, timings["student"]),
        },
        "agreement": _agreement(task, s_out, t_out),
        "quality_retained": _ratio(s_quality, t_quality),
        "size_reduction": 1.0 - s_params / t_params if t_params else None,
        "speedup": _ratio(timings["teacher"]["batch_1"], timings["student"]["batch_1"]),
        "speedup_batch32": _ratio(timings["teacher"]["batch_32"], timings["student"]["batch_32"]),
        "kd_gain": None,
        "device": prepared.device.type,
        "epochs": outcome.epochs,
        "steps": outcome.steps,
        "train_seconds": round(outcome.seconds, 3),
        "loss": [f"{t.weight:g}*{t.name}" for t in prepared.objective.terms],
        "onnx_max_abs_diff": onnx_max_abs_diff,
        "resumable": False,
    }
    if task == "sentence_embedding":
        s_emb, t_emb = torch.cat(s_out.outputs), torch.cat(t_out.outputs)
        report["embedding"] = {
            "mean_cosine_student_teacher": measure.mean_cosine(s_emb, t_emb),
            "retrieval_agreement": measure.retrieval_agreement(s_emb, t_emb),
        }
    return report


def _summary(model: nn.Module, quality: float, params: int, ms: dict[str, float]) -> dict[str, Any]:
    return {
        "accuracy": quality,
        "parameters": params,
        "layers": num_layers(model),
        "latency_ms_batch1": ms["batch_1"],
        "latency_ms_batch32": ms["batch_32"],
    }


def _agreement(task: str, student: measure.ValOutputs, teacher: measure.ValOutputs) -> float:
    if task == "sentence_embedding":
        return measure.retrieval_agreement(torch.cat(student.outputs), torch.cat(teacher.outputs))
    s, t = torch.cat(student.outputs).argmax(-1), torch.cat(teacher.outputs).argmax(-1)
    return float((s == t).float().mean())


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def summarize(report: dict[str, Any]) -> str:
    retained = report["quality_retained"]
    kept = "n/a" if retained is None else f"{retained:.1%}"
    return (
        f"Student {report['task']} {report['quality_metric']} {report['student']['accuracy']:.4f} "
        f"vs teacher {report['teacher']['accuracy']:.4f} ({kept} retained); "
        f"{report['size_reduction']:.1%} fewer parameters; {report['speedup']:.2f}x the "
        f"teacher's speed at batch 1 and {report['speedup_batch32']:.2f}x at batch 32 "
        f"(sequence length {report['sequence_length']})."
    )


def model_card(report: dict[str, Any]) -> str:
    lines = [
        f"# Distilled {report['task']} student",
        "",
        "Load it offline: unzip student.zip into `student/`, then "
        "`AutoModel.from_pretrained('student', local_files_only=True)` (or the task's class).",
        "",
        summarize(report),
        "",
        "```json",
        json.dumps({k: report[k] for k in ("teacher", "student")}, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)
