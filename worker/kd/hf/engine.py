"""A transformer job: `prepare_hf` loads and checks it, `distill_hf` trains the student
(and, when asked, the teacher-free baseline), saves it (Hugging Face directory ZIP, ONNX)
and writes the report. `worker.kd.engine` calls these when the teacher is a model-directory
ZIP. Training resumes exactly from its checkpoint (`worker.kd.hf.train`), and the teacher's
outputs on the training texts are computed once (`worker.kd.hf.teacher_outputs`)."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from worker.kd.cache import TeacherCache
from worker.kd.checkpoint import Checkpointing, fingerprint
from worker.kd.errors import IncompatibleModels, InvalidSpec
from worker.kd.evaluate import count_parameters
from worker.kd.hf import measure
from worker.kd.hf.data import Encoded, encode_splits, read_examples
from worker.kd.hf.export import export_onnx
from worker.kd.hf.layout import is_model_zip
from worker.kd.hf.models import (
    LoadedTeacher,
    build_student,
    choose_layers,
    config_of,
    load_teacher,
    num_layers,
    save_student,
)
from worker.kd.hf.objective import (
    TransformerObjective,
    baseline_objective,
    build_objective,
    layer_map,
)
from worker.kd.hf.teacher_outputs import teacher_source
from worker.kd.hf.train import Outcome, TeacherSource, Trainer
from worker.kd.history import RecordingReporter
from worker.kd.reporting import Reporter
from worker.kd.spec import FromTeacherStudent, JobSpec
from worker.kd.train import seed_everything

if TYPE_CHECKING:
    from worker.kd.engine import DistillResult

REPORT_SCHEMA_VERSION = 2  # 2: baseline, baseline_skipped and kd_gain; resumable
BASELINE = "baseline_"  # the prefix of the baseline's metrics
MODELS = ("teacher", "student", "baseline")  # the report's model entries


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


def distill_hf(
    prepared: HFPrepared,
    out_dir: Path,
    reporter: Reporter,
    checkpointing: Checkpointing | None = None,
    cache: TeacherCache | None = None,
) -> DistillResult:
    """Train (resuming from `checkpointing` when it holds this recipe's run; teacher
    outputs from `cache` when it holds them), then save, measure and report."""
    from worker.kd.engine import DistillResult

    out_dir.mkdir(parents=True, exist_ok=True)
    recorder = RecordingReporter(reporter)
    prepared.teacher.model.to(prepared.device)
    try:
        teacher_val = _predict(prepared, prepared.teacher.model)  # fixed: computed once
        skipped = baseline_unavailable(prepared) if prepared.spec.baseline else None
        if skipped is not None:
            recorder.event("baseline_skipped", f"No baseline: {skipped}.", {"reason": skipped})
        share = 0.5 if prepared.spec.baseline and skipped is None else 1.0
        outcome = train_student(prepared, teacher_val, recorder, checkpointing, cache, share)
        baseline = None
        if share < 1.0:
            baseline = train_baseline(prepared, teacher_val, recorder, checkpointing)
        report, artifacts = _write_outputs(
            prepared, out_dir, recorder, outcome, teacher_val, baseline, skipped
        )
    finally:
        prepared.teacher.cleanup()
    return DistillResult(report=report, artifacts=artifacts)


# Training ---------------------------------------------------------------------------------


@dataclass
class Baseline:
    """The student architecture trained from the same initialisation without the teacher."""

    student: nn.Module
    outcome: Outcome


def checkpoint_fingerprint(spec: JobSpec) -> str:
    """The recipe, and the truncation the token ids were made with."""
    return f"{fingerprint(spec)}:transformer:{spec.dataset.max_length}"


def train_student(
    prepared: HFPrepared,
    teacher_val: measure.ValOutputs,
    recorder: RecordingReporter,
    checkpointing: Checkpointing | None,
    cache: TeacherCache | None,
    share: float = 1.0,
) -> Outcome:
    """Distil into `prepared.student`: AdamW with warmup and cosine decay, exact resume."""
    teacher = teacher_source(prepared, prepared.objective, recorder, cache)
    trainer = _trainer(prepared, prepared.student, prepared.objective, teacher, teacher_val,
                       recorder, checkpointing, checkpoint_fingerprint(prepared.spec),
                       span=(0.0, share))  # fmt: skip
    _announce(prepared, recorder, trainer.total_steps)
    return trainer.fit()


def baseline_unavailable(prepared: HFPrepared) -> str | None:
    """Why no teacher-free baseline can be trained for this job, or None when one can."""
    if prepared.task == "sentence_embedding":
        return "a sentence-embedding student has no target to learn from without its teacher"
    if prepared.task == "sequence_classification" and prepared.train.labels is None:
        return "the dataset has no labels to train a classifier on without the teacher"
    return None


def new_student(prepared: HFPrepared) -> nn.Module:
    """The job's student as `prepare_hf` built it, before any training: same seed, same
    initialisation (the teacher's layers for from_teacher, seeded weights for hf)."""
    seed_everything(prepared.spec.training.seed)
    return build_student(prepared.spec.student, prepared.teacher.model).to(prepared.device)


def train_baseline(
    prepared: HFPrepared,
    teacher_val: measure.ValOutputs,
    recorder: RecordingReporter,
    checkpointing: Checkpointing | None,
) -> Baseline:
    """The same student, initialisation, budget and seed, on cross-entropy alone: labels
    for a classifier, next tokens for a causal LM. What the teacher adds is the difference."""
    student = new_student(prepared)
    objective = baseline_objective(prepared.task).to(prepared.device)
    own_checkpoint = None
    if checkpointing is not None:
        path = checkpointing.path.with_name(f"baseline-{checkpointing.path.name}")
        own_checkpoint = Checkpointing(path, checkpointing.every_steps)
    trainer = _trainer(prepared, student, objective, None, teacher_val, recorder, own_checkpoint,
                       checkpoint_fingerprint(prepared.spec) + ":baseline", prefix=BASELINE,
                       span=(0.5, 0.5))  # fmt: skip
    target = "next tokens" if prepared.task == "causal_lm" else "labels"
    recorder.event(
        "baseline_started",
        f"Training the same {prepared.spec.student.arch} student from the same initialisation "
        f"without the teacher ({trainer.total_steps} steps on {target}, same seed), to measure "
        "what distillation adds.",
        {"steps": trainer.total_steps, "target": target},
    )
    return Baseline(student, trainer.fit())


def _trainer(
    prepared: HFPrepared,
    student: nn.Module,
    objective: TransformerObjective,
    teacher: TeacherSource | None,
    teacher_val: measure.ValOutputs,
    recorder: RecordingReporter,
    checkpointing: Checkpointing | None,
    recipe: str,
    *,
    prefix: str = "",
    span: tuple[float, float],
) -> Trainer:
    """A run on the job's training texts, validated against the teacher's fixed outputs."""
    return Trainer(
        student=student, objective=objective, teacher=teacher, data=prepared.train,
        tokenizer=prepared.teacher.tokenizer, layout=prepared.teacher.layout, task=prepared.task,
        training=prepared.spec.training, device=prepared.device, reporter=recorder,
        validate=_validator(prepared, student, teacher_val, recorder, prefix),
        history=recorder.metrics, checkpointing=checkpointing, fingerprint=recipe,
        prefix=prefix, progress_span=span,
    )  # fmt: skip


def _validator(
    prepared: HFPrepared,
    student: nn.Module,
    teacher_val: measure.ValOutputs,
    reporter: Reporter,
    prefix: str,
) -> Callable[[int, int], None]:
    def validate(step: int, epoch: int) -> None:
        mine = _predict(prepared, student)
        value = measure.quality(prepared.task, mine, teacher_val)
        reporter.metric(f"{prefix}val_accuracy", value, step=step, epoch=epoch)
        if prepared.task == "sentence_embedding":
            s_emb, t_emb = torch.cat(mine.outputs), torch.cat(teacher_val.outputs)
            cosine = measure.mean_cosine(s_emb, t_emb)
            reporter.metric(f"{prefix}val_cosine", cosine, step=step, epoch=epoch)

    return validate


def _predict(prepared: HFPrepared, model: nn.Module) -> measure.ValOutputs:
    t = prepared.teacher
    return measure.predict(model, prepared.task, prepared.val, t.tokenizer, t.layout,
                           prepared.device)  # fmt: skip


def _announce(prepared: HFPrepared, reporter: Reporter, steps: int) -> None:
    spec = prepared.spec
    terms = [f"{t.weight:g}*{t.name}" for t in prepared.objective.terms]
    student_params = count_parameters(prepared.student)
    reporter.event(
        "training_started",
        f"Distilling a {prepared.task} transformer into a {spec.student.arch} student "
        f"({num_layers(prepared.student)} layers, {student_params:,} parameters) for "
        f"{spec.training.epochs} epochs ({steps} steps) on {prepared.device.type}; loss "
        f"{' + '.join(terms)}.",
        {
            "task": prepared.task,
            "student_parameters": student_params,
            "teacher_parameters": count_parameters(prepared.teacher.model),
            "train_samples": len(prepared.train),
            "val_samples": len(prepared.val),
            "labels_used": prepared.train.labels is not None,
            "loss": terms,
            "epochs": spec.training.epochs,
            "steps": steps,
        },
    )


# Outputs ----------------------------------------------------------------------------------


def _write_outputs(
    prepared: HFPrepared,
    out_dir: Path,
    recorder: RecordingReporter,
    outcome: Outcome,
    teacher_val: measure.ValOutputs,
    baseline: Baseline | None,
    baseline_skipped: str | None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    student_dir = out_dir / "student"
    shutil.rmtree(student_dir, ignore_errors=True)
    prepared.student.eval()
    save_student(prepared.student, prepared.teacher, student_dir)
    artifacts = {"student.zip": zip_directory(student_dir, out_dir / "student.zip")}
    artifacts.update(export_onnx(prepared, out_dir, recorder))
    report = build_report(
        prepared, outcome, recorder.onnx_max_abs_diff, teacher_val=teacher_val,
        baseline=baseline, baseline_skipped=baseline_skipped,
    )  # fmt: skip
    artifacts["report.json"] = out_dir / "report.json"
    artifacts["report.json"].write_text(json.dumps(report, indent=2) + "\n")
    artifacts["metrics.csv"] = out_dir / "metrics.csv"
    recorder.write_csv(artifacts["metrics.csv"])
    artifacts["README.md"] = out_dir / "README.md"
    artifacts["README.md"].write_text(model_card(report))
    recorder.event("training_finished", summarize(report), {
        k: report[k] for k in ("quality_retained", "size_reduction", "speedup", "speedup_batch32",
                               "kd_gain")
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
    prepared: HFPrepared,
    outcome: Outcome,
    onnx_max_abs_diff: float | None,
    *,
    teacher_val: measure.ValOutputs | None = None,
    baseline: Baseline | None = None,
    baseline_skipped: str | None = None,
) -> dict[str, Any]:
    """report.json: the DistilBERT triple (quality retained, parameter reduction, speed-up
    at batch 1 and 32 for a stated sequence length), measured here; with a baseline, what
    distillation added (kd_gain: student quality minus the baseline's, same measure)."""
    task, teacher = prepared.task, prepared.teacher
    t_out = teacher_val if teacher_val is not None else _predict(prepared, teacher.model)
    s_out = _predict(prepared, prepared.student)
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
        "speedup": timings["speedup"]["batch_1"],
        "speedup_batch32": timings["speedup"]["batch_32"],
        "speedup_range": timings["speedup_range"],
        "timing": timings["timing"],
        # A gain is claimed only when the baseline was trained and measured in this job.
        "baseline": None,
        "baseline_skipped": baseline_skipped,
        "kd_gain": None,
        "device": prepared.device.type,
        "epochs": outcome.epochs,
        "steps": outcome.steps,
        "train_seconds": round(outcome.seconds, 3),
        "loss": [f"{t.weight:g}*{t.name}" for t in prepared.objective.terms],
        "onnx_max_abs_diff": onnx_max_abs_diff,
        "resumable": True,
    }
    if baseline is not None:
        b_out = _predict(prepared, baseline.student)
        b_quality = measure.quality(task, b_out, t_out)
        report["baseline"] = {
            "accuracy": b_quality,
            "parameters": count_parameters(baseline.student),
            "layers": num_layers(baseline.student),
            "agreement": _agreement(task, b_out, t_out),
            "epochs": baseline.outcome.epochs,
            "steps": baseline.outcome.steps,
            "train_seconds": round(baseline.outcome.seconds, 3),
        }
        report["kd_gain"] = s_quality - b_quality
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
        f"(sequence length {report['sequence_length']})" + _gain_clause(report) + "."
    )


def _gain_clause(report: dict[str, Any]) -> str:
    if report["kd_gain"] is not None:
        return f"; {report['kd_gain']:+.4f} over the same student trained without the teacher"
    if report["baseline_skipped"]:
        return f"; no baseline ({report['baseline_skipped']})"
    return ""


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
        json.dumps({k: report[k] for k in MODELS if report[k]}, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)
