"""A tensor-classification job: `prepare_tensor` loads and checks it; `distill_tensor`
builds the loss and the teacher's outputs, trains the student (and the teacher-free
baseline) through the one `Trainer` with the `TensorAdapter`, saves the files, measures,
and writes the report."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.kd.budget import Plan, plan_job, with_plan
from worker.kd.datasets.splits import Splits, load_dataset
from worker.kd.errors import IncompatibleModels, InvalidSpec, fmt_shape, shorten
from worker.kd.exports.tensor import export_onnx, save_student, student_config
from worker.kd.jobs import DistillResult, Prepared
from worker.kd.losses import build_loss_terms, shape_key
from worker.kd.report.plots import plot_curves
from worker.kd.report.schema import TensorReport, report_json
from worker.kd.report.summary import headline, model_card, summarize
from worker.kd.report.tensor import ModelUnderTest, tensor_report
from worker.kd.spec import TRANSFORMER_ARCHS, JobSpec, is_planned, planned_training
from worker.kd.student_size import too_large
from worker.kd.students import build_student, load_file_student
from worker.kd.tasks.tensor import Objective, TeacherSource, TensorAdapter
from worker.kd.teachers import load_teacher, probe_teacher
from worker.kd.training.augment import Augmenter
from worker.kd.training.checkpoint import Checkpointing, fingerprint
from worker.kd.training.distributed import Ranks
from worker.kd.training.evaluate import ValidationSet, count_parameters
from worker.kd.training.features import module_features
from worker.kd.training.pairing import pair_layers
from worker.kd.training.reporting import RecordingReporter, Reporter
from worker.kd.training.teacher_cache import TeacherCache, file_sha256
from worker.kd.training.teacher_sources import (
    DensePlan,
    cached_outputs,
    cached_teacher,
    online_teacher,
    teacher_forward,
)
from worker.kd.training.trainer import Trainer, TrainOutcome, seed_everything

BASELINE = "baseline_"
NO_LABELS = "the dataset has no labels to train a baseline on"
PLAN_TIMED_STEPS = 3  # optimizer steps timed to plan the budget (after one warm-up)


def distill_tensor(
    prepared: Prepared,
    out_dir: Path,
    reporter: Reporter,
    checkpointing: Checkpointing | None = None,
    cache: TeacherCache | None = None,
) -> DistillResult:
    """Train the student (and the baseline when asked), choosing epochs on the selection
    split, save its files, and measure the saved student against the teacher on the
    evaluation split, which no choice has seen. In a data parallel job every rank trains
    (worker.kd.training.distributed) and rank 0 alone saves, measures and reports; the
    others return an empty result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec, device = prepared.spec, prepared.device
    recorder = RecordingReporter(reporter)
    val = ValidationSet.build(prepared.data, prepared.teacher, device)  # selection
    baseline_wanted = spec.baseline and prepared.data.y_train is not None
    share = 0.5 if baseline_wanted else 1.0
    student, outcome = _train_student(prepared, val, recorder, checkpointing, cache, share)
    baseline: tuple[nn.Module, TrainOutcome] | None = None
    if baseline_wanted:
        baseline = _train_baseline(prepared, val, recorder, checkpointing)
    elif spec.baseline:
        recorder.event("baseline_skipped", f"No baseline: {NO_LABELS}.")
    if not Ranks.current().leader:  # the other ranks helped train; the leader writes
        return DistillResult(report={}, artifacts={})
    evaluation = ValidationSet.evaluation(prepared.data, prepared.teacher, device)
    report, artifacts = _write_outputs(
        prepared, evaluation, recorder, out_dir, student, outcome, baseline
    )
    return DistillResult(report=report, artifacts=artifacts)


# Preparing -------------------------------------------------------------------------------


def prepare_tensor(
    spec: JobSpec,
    teacher_path: Path,
    dataset_path: Path | None,
    student_path: Path | None,
    device: torch.device,
    max_student_params: int | None = None,
    eval_dataset_path: Path | None = None,
) -> Prepared:
    """Load and check a tensor job's teacher, dataset and student against each other
    (held-out data comes inside the dataset: the spec refuses `dataset.eval_file_id`)."""
    del eval_dataset_path
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
    plan = None
    if not is_planned(spec.training):
        plan = plan_tensor(spec, data, teacher, num_classes, device, student_path)
        spec = with_plan(spec, plan)
    return Prepared(
        spec=spec.model_copy(update={"training": planned_training(spec.training)}),
        teacher=teacher,
        data=data,
        input_shape=data.input_shape,
        num_classes=num_classes,
        device=device,
        teacher_path=Path(teacher_path),
        dataset_path=None if dataset_path is None else Path(dataset_path),
        student_path=None if student_path is None else Path(student_path),
        plan=plan,
    )


def plan_tensor(
    spec: JobSpec,
    data: Splits,
    teacher: nn.Module,
    num_classes: int,
    device: torch.device,
    student_path: Path | None,
    steps: int = PLAN_TIMED_STEPS,
) -> Plan:
    """The job's training plan (worker.kd.budget): the student's parameters counted, and
    the seconds of one optimizer step measured on a real batch (the teacher's forward
    included when the recipe runs the teacher), so `budget_seconds` caps the epochs."""
    seed_everything(spec.training.seed)
    student = (
        load_file_student(Path(student_path)) if student_path is not None
        else build_student(spec.student, data.input_shape, num_classes)
    ).to(device)  # fmt: skip
    n_train, n_params = len(data.x_train), count_parameters(student)
    first = plan_job(spec, n_train, n_params, None)
    batch = data.x_train[: first.training["batch_size"]].to(device)  # (B, *input_shape)
    losses = spec.distillation.losses
    needs_teacher = not (losses and all(term.kind == "ce" for term in losses))
    seconds = time_steps(student, teacher if needs_teacher else None, batch, num_classes, steps)
    return plan_job(spec, n_train, n_params, seconds)


def time_steps(
    student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, num_classes: int, steps: int
) -> float:
    """Seconds per optimizer step (median of `steps` after one warm-up) of `student` on
    batch `x` (B, ...), with the teacher's forward when it is given."""
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    target = torch.zeros(len(x), dtype=torch.long, device=x.device)
    student.train()
    times: list[float] = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        if teacher is not None:
            with torch.no_grad():
                teacher(x)
        logits = student(x)  # (B, K)
        loss = nn.functional.cross_entropy(logits[:, :num_classes], target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return times[len(times) // 2]


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
    example = prepared.data.x_train[:2].to(prepared.device)  # (2, *input_shape)
    terms, pairing = pair_layers(terms, student, prepared.teacher, example)
    shapes = _layer_shapes(prepared, student, terms)
    try:
        loss = build_loss_terms(terms, shapes, has_labels=labeled)
    except ValueError as exc:
        raise InvalidSpec(f"distillation.losses: {exc}") from exc
    needs_teacher = any(term["kind"] != "ce" for term in terms)
    return Objective(loss.to(prepared.device), needs_teacher, tuple(pairing))


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


def teacher_source(
    prepared: Prepared, objective: Objective, reporter: Reporter, cache: TeacherCache | None
) -> TeacherSource:
    """The teacher's outputs per batch: cached or online, by `training.teacher_sources`."""
    layers = objective.loss.teacher_layers
    online = online_teacher(prepared.teacher, layers)
    x, distillation = prepared.data.x_train, prepared.spec.distillation
    plan = DensePlan(prepared.teacher, x, prepared.device, tuple(layers), _cache_parts(prepared))
    outputs = cached_outputs(plan, reporter, cache, enabled=distillation.cache_teacher,
                             augmented=distillation.augment.active)  # fmt: skip
    return online if outputs is None else cached_teacher(outputs, online, prepared.device)


def _cache_parts(prepared: Prepared) -> dict[str, Any]:
    spec = prepared.spec
    dataset = (
        f"builtin:{spec.dataset.builtin}"
        if prepared.dataset_path is None
        else file_sha256(prepared.dataset_path)
    )
    return {
        "teacher": file_sha256(prepared.teacher_path),
        "teacher_format": spec.teacher.format,
        "dataset": dataset,
        "dataset_spec": spec.dataset.model_dump(mode="json", exclude={"file_id"}),
        "split": [
            spec.training.val_fraction,
            spec.training.seed,
            prepared.data.selection,
            prepared.data.evaluation,
        ],
    }


# Training -------------------------------------------------------------------------------


def _adapter(
    prepared: Prepared,
    student: nn.Module,
    objective: Objective,
    teacher: TeacherSource | None,
    val: ValidationSet,
) -> TensorAdapter:
    spec = prepared.spec
    augmenter = Augmenter(spec.distillation.augment, prepared.num_classes, spec.training.seed)
    return TensorAdapter(
        student, objective, teacher, prepared.data, val, prepared.device, augmenter
    )


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
    _announce_pairing(recorder, objective)
    teacher = teacher_source(prepared, objective, recorder, cache)
    adapter = _adapter(prepared, student, objective, teacher, val)
    trainer = Trainer(
        student, objective.loss, adapter, planned_training(spec.training), prepared.device,
        recorder, history=recorder.metrics, checkpointing=checkpointing,
        fingerprint=fingerprint(spec),
        progress_span=(0.0, share), used_labels=prepared.data.y_train is not None,
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
        student, objective.loss, _adapter(prepared, student, objective, None, val),
        planned_training(spec.training), prepared.device, recorder, history=recorder.metrics,
        checkpointing=baseline_checkpoint, fingerprint=fingerprint(spec) + ":baseline",
        metric_prefix=BASELINE, progress_span=(0.5, 0.5), used_labels=True,
    )  # fmt: skip
    recorder.event(
        "baseline_started",
        f"Training the same {spec.student.arch} student without the teacher "
        f"({trainer.total_steps} steps, same seed), to measure what distillation adds.",
    )
    return student, trainer.fit()


def _announce_pairing(recorder: RecordingReporter, objective: Objective) -> None:
    """Say which layers were paired automatically; the report lists them too."""
    recorder.layer_pairing = [pair.as_dict() for pair in objective.pairing]
    for pair in objective.pairing:
        recorder.event(
            "layers_paired",
            f"No layers named for {', '.join(pair.losses)}: paired the student's {pair.how} "
            f"features ({pair.student!r}) with the teacher's ({pair.teacher!r}).",
            pair.as_dict(),
        )


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
            "selection": data.selection,
            "evaluation": data.evaluation,
            "eval_samples": len(data.x_eval),
            "labels_used": data.y_train is not None,
            "device": prepared.device.type,
            "loss": terms,
        },
    )


# Outputs --------------------------------------------------------------------------------


def _write_outputs(
    prepared: Prepared,
    evaluation: ValidationSet,
    recorder: RecordingReporter,
    out_dir: Path,
    student: nn.Module,
    outcome: TrainOutcome,
    baseline: tuple[nn.Module, TrainOutcome] | None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Save the student, measure it (and the baseline) on the evaluation split, and, when
    `keep: best` and the baseline is significantly better, make the baseline's files the
    job's student."""
    spec, data = prepared.spec, prepared.data
    config = student_config(spec.student, prepared.input_shape, prepared.num_classes)
    artifacts = _save(student, config, evaluation, out_dir, recorder)
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
    report = tensor_report(
        spec,
        ModelUnderTest(prepared.teacher, prepared.teacher_path),
        ModelUnderTest(downloaded, artifacts["student.pt"]),
        evaluation,
        outcome,
        prepared.device,
        baseline=baseline_model,
        onnx_max_abs_diff=recorder.onnx_max_abs_diff,
        layer_pairing=recorder.layer_pairing,
        selection={"split": data.selection, "samples": len(data.x_val)},
        no_verdict_reason=NO_LABELS if spec.baseline and baseline is None else None,
        processes=Ranks.current().world,
    )
    if baseline is not None and report.verdict is not None and report.verdict.kept == "baseline":
        artifacts = _save(baseline[0], config, evaluation, out_dir, recorder)
        recorder.event(
            "baseline_kept",
            "keep: best: the baseline (no teacher) is significantly better "
            f"({-(report.kd_gain or 0.0):+.4f}), so its files are the job's student.",
            {"kd_gain": report.kd_gain, "p_value": report.verdict.p_value},
        )
    return report_json(report), _write_files(prepared, recorder, out_dir, report, artifacts)


def _save(
    model: nn.Module,
    config: dict[str, Any],
    evaluation: ValidationSet,
    out_dir: Path,
    recorder: RecordingReporter,
) -> dict[str, Path]:
    """The student's files (TorchScript, safetensors, config, ONNX) from `model`."""
    artifacts = save_student(model, config, out_dir)
    artifacts.update(_export_onnx(model, evaluation, out_dir, recorder))
    return artifacts


def _write_files(
    prepared: Prepared,
    recorder: RecordingReporter,
    out_dir: Path,
    model: TensorReport,
    artifacts: dict[str, Path],
) -> dict[str, Path]:
    report = report_json(model)
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
    recorder.event("training_finished", summarize(report), headline(report))
    return artifacts


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
