"""A transformer job: `prepare_hf` loads and checks it, `distill_hf` trains the student
(and, when asked, the teacher-free baseline), saves it (Hugging Face directory ZIP, ONNX)
and writes the report. `worker.kd.engine` calls these when the teacher is a model-directory
ZIP. Training resumes exactly from its checkpoint (`worker.kd.training.trainer`), and the teacher's
outputs on the training texts are computed once (`worker.kd.tasks.transformer_teacher`)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.kd.budget import Plan, with_plan
from worker.kd.errors import IncompatibleModels, InvalidSpec
from worker.kd.exports.transformer import export_onnx, export_with_past
from worker.kd.formats import is_model_zip
from worker.kd.hf import measure
from worker.kd.hf.augment import TokenNoise
from worker.kd.hf.data import Encoded, check_targets, encode_splits, read_examples
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
from worker.kd.jobs import DistillResult, HFPrepared, Trained
from worker.kd.report.schema import report_json
from worker.kd.report.summary import headline, model_card, summarize
from worker.kd.report.transformer import predict, transformer_report
from worker.kd.spec import (
    NO_TOKEN_NOISE_FOR_LM,
    TOKEN_NOISE_TASKS,
    FromTeacherStudent,
    JobSpec,
    is_planned,
    planned_training,
)
from worker.kd.tasks.on_policy import OnPolicyAdapter, on_policy_objective
from worker.kd.tasks.sequence_kd import (
    GENERATIONS_ARTIFACT,
    SequenceKDAdapter,
    generated_dataset,
    sequence_objective,
    teacher_generations,
    write_artifact,
)
from worker.kd.tasks.transformer import (
    TRANSFORMER_ADAPTERS,
    TransformerAdapter,
    TransformerTeacherSource,
)
from worker.kd.tasks.transformer_plan import plan_transformer
from worker.kd.tasks.transformer_teacher import online_teacher, teacher_source
from worker.kd.training.checkpoint import Checkpointing, fingerprint
from worker.kd.training.evaluate import count_parameters
from worker.kd.training.reporting import RecordingReporter, Reporter
from worker.kd.training.teacher_cache import TeacherCache
from worker.kd.training.trainer import Trainer, TrainOutcome, seed_everything

BASELINE = "baseline_"  # the prefix of the baseline's metrics


def is_hf_teacher(spec: JobSpec, teacher_path: Path) -> bool:
    return spec.teacher.format == "hf_zip" or (
        spec.teacher.format == "auto" and is_model_zip(Path(teacher_path))
    )


def prepare_hf(
    spec: JobSpec,
    teacher_path: Path,
    dataset_path: Path | None,
    device: torch.device,
    eval_dataset_path: Path | None = None,
    student_path: Path | None = None,
) -> HFPrepared:
    examples = read_examples(spec.dataset, dataset_path)
    held_out = None
    if spec.dataset.eval_file_id is not None or eval_dataset_path is not None:
        if eval_dataset_path is None:
            raise InvalidSpec("dataset.eval_file_id names an evaluation file, but none was given.")
        held_out = read_examples(spec.dataset, eval_dataset_path, "evaluation file")
    teacher = load_teacher(Path(teacher_path), spec.teacher.task)
    try:
        if spec.teacher.task not in (None, teacher.task):
            raise InvalidSpec(
                f"teacher.task is {spec.teacher.task!r} but the model directory is a "
                f"{teacher.task} model."
            )
        splits = encode_splits(
            examples, teacher.tokenizer, spec.dataset.max_length,
            spec.training.val_fraction, spec.training.seed, held_out,
        )  # fmt: skip
        check_targets(splits, teacher.task)
        if teacher.task not in TOKEN_NOISE_TASKS and spec.distillation.augment.tokens:
            raise InvalidSpec(NO_TOKEN_NOISE_FOR_LM)
        train, val = splits.train, splits.selection
        _check_labels(teacher, train, val, splits.evaluation)
        seed_everything(spec.training.seed)
        student = build_student(spec.student, teacher.model, student_path, teacher.tokenizer,
                                teacher.task)  # fmt: skip
        kept = (
            choose_layers(spec.student, num_layers(teacher.model))
            if isinstance(spec.student, FromTeacherStudent)
            else None
        )
        mapping = layer_map(num_layers(student), num_layers(teacher.model), kept)
        labeled = train.labels is not None and teacher.task == "sequence_classification"
        objective = _method_objective(spec, teacher.task) or build_objective(
            spec, teacher.task, labeled, config_of(student), config_of(teacher.model), mapping
        )
        # Planned at the first claim as a tensor job is: steps timed (worker.kd.budget).
        plan = None
        if not is_planned(spec.training):
            plan = plan_transformer(spec, teacher, student, objective, train, device)
            spec = with_plan(spec, plan)
        spec = _with_token_share(spec, teacher.task, plan)
    except BaseException:
        teacher.cleanup()
        raise
    spec = spec.model_copy(update={"training": planned_training(spec.training)})
    return HFPrepared(
        spec, teacher, student.to(device), objective.to(device), train, val, device,
        Path(teacher_path), None if dataset_path is None else Path(dataset_path), plan,
        student_path=None if student_path is None else Path(student_path),
        splits=splits,
        eval_dataset_path=None if eval_dataset_path is None else Path(eval_dataset_path),
    )  # fmt: skip


def _method_objective(spec: JobSpec, task: str) -> TransformerObjective | None:
    """The loss of a causal-LM method that learns from generated text, or None."""
    method = spec.distillation.method if task == "causal_lm" else "logits"
    if method == "sequence":
        return sequence_objective(spec)
    if method == "on_policy":
        return on_policy_objective(spec)
    return None


def _check_labels(teacher: LoadedTeacher, *parts: Encoded) -> None:
    if teacher.task != "sequence_classification":
        return
    classes = int(config_of(teacher.model).num_labels)
    present = [y for y in (p.labels for p in parts) if y is not None and len(y)]
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
    out_dir.mkdir(parents=True, exist_ok=True)
    recorder = RecordingReporter(reporter)
    prepared.teacher.model.to(prepared.device)
    try:
        teacher_val = predict(prepared, prepared.teacher.model)  # fixed: computed once
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
) -> TrainOutcome:
    """Distil into `prepared.student`: AdamW with warmup and cosine decay, exact resume.
    `method: sequence` first has the teacher generate its training texts (resumable, in
    the checkpoint's directory); `method: on_policy` samples from the student as it trains."""
    adapter = _student_adapter(prepared, teacher_val, recorder, checkpointing, cache)
    trainer = _trainer(prepared, prepared.student, prepared.objective, adapter, recorder,
                       checkpointing, checkpoint_fingerprint(prepared.spec),
                       span=(0.0, share))  # fmt: skip
    _announce(prepared, recorder, trainer.total_steps)
    outcome = trainer.fit()
    if isinstance(adapter, OnPolicyAdapter):
        recorder.event(
            "on_policy_finished",
            f"{adapter.student_batches} of this run's batches were completed by the student "
            f"(lmbda {prepared.spec.distillation.lmbda:g}).",
            {"student_batches": adapter.student_batches},
        )
    return outcome


def _student_adapter(
    prepared: HFPrepared,
    teacher_val: measure.ValOutputs,
    recorder: RecordingReporter,
    checkpointing: Checkpointing | None,
    cache: TeacherCache | None,
) -> TransformerAdapter:
    """The distilled student's adapter: the task's own, or a causal-LM method's."""
    method, t, spec = lm_method(prepared), prepared.teacher, prepared.spec
    if method == "sequence":
        directory = None if checkpointing is None else checkpointing.path.parent
        prepared.generated = teacher_generations(prepared, recorder, directory)
        data, prompt_lengths = generated_dataset(prepared.generated)
        return SequenceKDAdapter(
            prepared.student, prepared.objective, _online(prepared), data, prepared.val,
            teacher_val, t.tokenizer, t.layout, prepared.device, prompt_lengths=prompt_lengths,
        )  # fmt: skip
    if method == "on_policy":
        return OnPolicyAdapter(
            prepared.student, prepared.objective, _online(prepared), prepared.train,
            prepared.val, teacher_val, t.tokenizer, t.layout, prepared.device,
            lmbda=spec.distillation.lmbda, generation=spec.distillation.generation,
            seed=spec.training.seed,
        )  # fmt: skip
    share = spec.distillation.augment.token_share(prepared.task)
    teacher = teacher_source(prepared, prepared.objective, recorder, cache, augmented=share > 0)
    adapter = _adapter(prepared, prepared.student, prepared.objective, teacher, teacher_val)
    if share > 0:
        vocab = _shared_vocabulary(t.tokenizer, prepared.student, t.model)
        adapter.noise = TokenNoise(share, t.tokenizer, vocab, spec.training.seed)
    return adapter


def _with_token_share(spec: JobSpec, task: str, plan: Plan | None) -> JobSpec:
    """The spec with `augment.tokens` decided: as stated, else the task's measured default
    when the planner chose the epochs (the two were chosen together, and consistent
    teaching needs the patient schedule: on a stated short one it measured worse, README
    "Transformer distillation"), else none. Decided at the first claim and stored with the
    planned training section (worker.pipeline), so a resume decides nothing."""
    augment = spec.distillation.augment
    if augment.tokens is not None:
        return spec
    share = augment.token_share(task) if plan is not None and "epochs" in plan.planned else 0.0
    decided = augment.model_copy(update={"tokens": share})
    distillation = spec.distillation.model_copy(update={"augment": decided})
    return spec.model_copy(update={"distillation": distillation})


def _shared_vocabulary(tokenizer: Any, *models: nn.Module) -> int:
    """How many token ids every model embeds and the tokenizer knows."""
    sizes = [len(tokenizer)]
    for model in models:
        embeddings = getattr(model, "get_input_embeddings", lambda: None)()
        if isinstance(embeddings, nn.Embedding):
            sizes.append(embeddings.num_embeddings)
    return min(sizes)


def lm_method(prepared: HFPrepared) -> str:
    """The causal-LM method (`logits` for other tasks)."""
    return prepared.spec.distillation.method if prepared.task == "causal_lm" else "logits"


def _online(prepared: HFPrepared) -> TransformerTeacherSource:
    """The teacher run on each batch: the texts of generating methods are new each time."""
    teacher = prepared.teacher
    return online_teacher(teacher.model, prepared.task, teacher.layout, False, False)


def baseline_unavailable(prepared: HFPrepared) -> str | None:
    """Why no teacher-free baseline can be trained for this job, or None when one can."""
    reason = TRANSFORMER_ADAPTERS[prepared.task].no_baseline
    if reason is not None:
        return reason
    if prepared.task == "sequence_classification" and prepared.train.labels is None:
        return "the dataset has no labels to train a classifier on without the teacher"
    return None


def new_student(prepared: HFPrepared) -> nn.Module:
    """The job's student as `prepare_hf` built it, before any training: same seed, same
    initialisation (the teacher's layers for from_teacher, seeded weights for hf)."""
    seed_everything(prepared.spec.training.seed)
    t = prepared.teacher
    student = build_student(prepared.spec.student, t.model, prepared.student_path, t.tokenizer,
                            t.task)  # fmt: skip
    return student.to(prepared.device)


def train_baseline(
    prepared: HFPrepared,
    teacher_val: measure.ValOutputs,
    recorder: RecordingReporter,
    checkpointing: Checkpointing | None,
) -> Trained:
    """The same student, initialisation, budget and seed, on cross-entropy alone: labels
    for a classifier, next tokens for a causal LM. What the teacher adds is the difference."""
    student = new_student(prepared)
    objective = baseline_objective(prepared.task).to(prepared.device)
    own_checkpoint = None
    if checkpointing is not None:
        path = checkpointing.path.with_name(f"baseline-{checkpointing.path.name}")
        own_checkpoint = Checkpointing(path, checkpointing.every_steps)
    adapter = _adapter(prepared, student, objective, None, teacher_val)
    trainer = _trainer(prepared, student, objective, adapter, recorder, own_checkpoint,
                       checkpoint_fingerprint(prepared.spec) + ":baseline", prefix=BASELINE,
                       span=(0.5, 0.5))  # fmt: skip
    target = TRANSFORMER_ADAPTERS[prepared.task].baseline_target
    recorder.event(
        "baseline_started",
        f"Training the same {prepared.spec.student.arch} student from the same initialisation "
        f"without the teacher ({trainer.total_steps} steps on {target}, same seed), to measure "
        "what distillation adds.",
        {"steps": trainer.total_steps, "target": target},
    )
    return Trained(student, trainer.fit())


def _trainer(
    prepared: HFPrepared,
    student: nn.Module,
    objective: TransformerObjective,
    adapter: TransformerAdapter,
    recorder: RecordingReporter,
    checkpointing: Checkpointing | None,
    recipe: str,
    *,
    prefix: str = "",
    span: tuple[float, float],
) -> Trainer:
    """A run through `adapter`, validated against the teacher's fixed outputs."""
    return Trainer(
        student, objective, adapter, planned_training(prepared.spec.training), prepared.device,
        recorder, history=recorder.metrics, checkpointing=checkpointing, fingerprint=recipe,
        metric_prefix=prefix, progress_span=span, used_labels=prepared.train.labels is not None,
    )  # fmt: skip


def _adapter(
    prepared: HFPrepared,
    student: nn.Module,
    objective: TransformerObjective,
    teacher: TransformerTeacherSource | None,
    teacher_val: measure.ValOutputs,
) -> TransformerAdapter:
    t = prepared.teacher
    return TRANSFORMER_ADAPTERS[prepared.task](
        student, objective, teacher, prepared.train, prepared.val, teacher_val, t.tokenizer,
        t.layout, prepared.device,
    )  # fmt: skip


def _announce(prepared: HFPrepared, reporter: Reporter, steps: int) -> None:
    spec = prepared.spec
    terms = [f"{t.weight:g}*{t.name}" for t in prepared.objective.terms]
    student_params = count_parameters(prepared.student)
    share = spec.distillation.augment.token_share(prepared.task)
    reporter.event(
        "training_started",
        f"Distilling a {prepared.task} transformer into a {spec.student.arch} student "
        f"({num_layers(prepared.student)} layers, {student_params:,} parameters) for "
        f"{spec.training.epochs} epochs ({steps} steps) on {prepared.device.type}; loss "
        f"{' + '.join(terms)}"
        + (
            f"; texts augmented: {share:.0%} of their tokens replaced, the same for teacher "
            "and student."
            if share
            else "."
        ),
        {
            "task": prepared.task,
            "student_parameters": student_params,
            "teacher_parameters": count_parameters(prepared.teacher.model),
            "train_samples": len(prepared.train),
            "val_samples": len(prepared.val),
            "eval_samples": len(prepared.evaluation),
            "labels_used": prepared.train.labels is not None,
            "loss": terms,
            "method": lm_method(prepared),
            "augment_tokens": share,
            "epochs": spec.training.epochs,
            "steps": steps,
        },
    )


# Outputs ----------------------------------------------------------------------------------


def _write_outputs(
    prepared: HFPrepared,
    out_dir: Path,
    recorder: RecordingReporter,
    outcome: TrainOutcome,
    teacher_val: measure.ValOutputs,
    baseline: Trained | None,
    baseline_skipped: str | None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    student_dir = out_dir / "student"
    shutil.rmtree(student_dir, ignore_errors=True)
    prepared.student.eval()
    save_student(prepared.student, prepared.teacher, student_dir)
    artifacts = {"student.zip": zip_directory(student_dir, out_dir / "student.zip")}
    artifacts.update(export_onnx(prepared, out_dir, recorder))
    with_past, onnx_with_past = export_with_past(prepared, out_dir, recorder)
    artifacts.update(with_past)
    if prepared.generated is not None:
        path = out_dir / GENERATIONS_ARTIFACT
        artifacts[GENERATIONS_ARTIFACT] = write_artifact(
            prepared.generated, prepared.teacher.tokenizer, path
        )
    # The report is measured on the evaluation texts; `teacher_val` (on the selection
    # texts) serves it only when there is no separate evaluation split.
    model = transformer_report(
        prepared, outcome, recorder.onnx_max_abs_diff,
        teacher_val=teacher_val if prepared.splits is None else None,
        baseline=baseline, baseline_skipped=baseline_skipped,
        onnx_with_past=onnx_with_past or None,
        teacher_cache=recorder.teacher_cache if prepared.task == "causal_lm" else None,
    )  # fmt: skip
    report = report_json(model)
    artifacts["report.json"] = out_dir / "report.json"
    artifacts["report.json"].write_text(json.dumps(report, indent=2) + "\n")
    artifacts["metrics.csv"] = out_dir / "metrics.csv"
    recorder.write_csv(artifacts["metrics.csv"])
    artifacts["README.md"] = out_dir / "README.md"
    artifacts["README.md"].write_text(model_card(report, prepared.teacher_path.name, ""))
    recorder.event("training_finished", summarize(report), headline(report))
    shutil.rmtree(student_dir, ignore_errors=True)
    return report, artifacts


def zip_directory(directory: Path, path: Path) -> Path:
    """The directory's files at the root of a ZIP (unzip it and `from_pretrained` it)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(directory.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(directory).as_posix())
    return path
