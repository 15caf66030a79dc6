"""The job spec: what a user asks for, validated before anything runs.

This module is shared by the API (which validates a spec at submit time, without torch)
and the engine (which runs it), so it imports pydantic and nothing heavier.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from worker.kd.catalogue import (
    LOSS_KINDS,
    TENSOR_TASKS,
    TRANSFORMER_TASKS,
    TaskKind,
    loss_meta,
    losses_for,
)

STUDENT_ARCHS: tuple[str, ...] = (
    "cnn", "file", "mlp", "resnet", "from_teacher", "hf", "hf_file",
)  # fmt: skip
# Students of Hugging Face teachers only (worker.kd.hf).
TRANSFORMER_ARCHS: tuple[str, ...] = ("from_teacher", "hf", "hf_file")
# How a causal-LM student learns from its teacher (distillation.method).
LM_METHODS: tuple[str, ...] = ("logits", "top_k", "sequence", "on_policy")
TEACHER_FORMATS: tuple[str, ...] = ("torchscript", "torch_export", "onnx", "safetensors", "hf_zip")
# Teacher formats whose classifier head can be found, so that feature and relation terms
# naming no layers are paired automatically (worker.kd.training.pairing); others name them.
PAIRABLE_TEACHER_FORMATS: tuple[str, ...] = ("torchscript", "safetensors")
DATASET_FORMATS: tuple[str, ...] = ("npz", "csv", "image_zip", "jsonl", "text")
BUILTIN_DATASETS: tuple[str, ...] = ("digits",)
__all__ = ["LOSS_KINDS", "TRANSFORMER_TASKS", "TaskKind"]


# Every number a spec can hold is bounded: an unbounded int reaches C code (a timer, a
# tensor size) as an OverflowError, not as a sentence the user can act on.
MAX_RUNTIME_SECONDS = 366 * 24 * 3600
BoundedInt = Annotated[int, Field(ge=-(10**12), le=10**12)]
BoundedFloat = Annotated[float, Field(ge=-1e12, le=1e12, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileRef(_Strict):
    file_id: str = Field(min_length=1, max_length=64, description="An uploaded file's id.")


class TeacherSpec(FileRef):
    """The teacher: an uploaded model mapping a batch of inputs to logits.

    `format` is sniffed from the file when `auto`: TorchScript, a `torch.export` program
    (`.pt2`), ONNX, or safetensors weights, which need the architecture they belong to,
    given inline as a student-registry arch: `{"file_id": ..., "arch": "cnn", ...}`.
    """

    model_config = ConfigDict(extra="allow")

    format: Literal["auto", "torchscript", "torch_export", "onnx", "safetensors", "hf_zip"] = "auto"
    arch: str | None = Field(None, description="For safetensors weights: the architecture.")
    task: Literal["sequence_classification", "sentence_embedding", "causal_lm"] | None = Field(
        None, description="For a Hugging Face model ZIP whose directory does not say its task."
    )

    @model_validator(mode="after")
    def _architecture(self) -> TeacherSpec:
        extra = dict(self.model_extra or {})
        if self.arch is None:
            if extra:
                raise ValueError(
                    f"unknown teacher fields {sorted(extra)}; architecture fields are only "
                    "allowed with 'arch' (safetensors weights)"
                )
            return self
        _check_arch({"arch": self.arch})
        if self.arch in ("file", *TRANSFORMER_ARCHS):
            raise ValueError("a safetensors teacher needs a registry arch (mlp, cnn, resnet)")
        return self

    def architecture(self) -> dict[str, Any] | None:
        """The inline architecture as a student spec dict, or None."""
        if self.arch is None:
            return None
        return {"arch": self.arch, **(self.model_extra or {})}


class DatasetSpec(_Strict):
    """The dataset: an uploaded file (`file_id`) or a bundled one (`builtin`).

    Formats: NPZ (`x`, optional `y`, `x_val`, `y_val`), CSV (numeric feature columns and a
    label column, `label_column`; no such column means unlabeled), an image-folder ZIP
    (one folder per class, PNG/JPEG, resized to `image_size`). Labels are optional
    everywhere: without them the student learns from the teacher alone.
    """

    file_id: str | None = Field(None, min_length=1, max_length=64)
    builtin: Literal["digits"] | None = None
    format: Literal["auto", "npz", "csv", "image_zip", "jsonl", "text"] = "auto"
    max_length: int = Field(
        128, ge=4, le=8192, description="Text datasets: tokens per example after truncation."
    )
    label_column: str = Field("label", min_length=1, max_length=200)
    image_size: tuple[
        Annotated[int, Field(ge=4, le=1024)], Annotated[int, Field(ge=4, le=1024)]
    ] = (
        32,
        32,
    )
    grayscale: bool = False
    eval_file_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Causal-LM jobs: a separate JSONL/text upload the report is measured on "
        "(default: a held-out part of the dataset).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.file_id is None) == (self.builtin is None):
            raise ValueError("give exactly one of dataset.file_id (an upload) or dataset.builtin")
        return self


class MLPStudent(_Strict):
    """A multilayer perceptron on the flattened input."""

    arch: Literal["mlp"]
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [128], max_length=32
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class CNNStudent(_Strict):
    """A small convolutional net, 1-D or 2-D by the rank of the samples.

    `layout: auto` reads (L,) and (C, L) samples as sequences (Conv1d) and (C, H, W) as
    images (Conv2d); `2d` reads (H, W) samples as one-channel images instead.
    """

    arch: Literal["cnn"]
    layout: Literal["auto", "1d", "2d"] = "auto"
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [16, 32], min_length=1, max_length=16
    )
    kernel_size: int = Field(3, ge=1, le=31)
    hidden: int = Field(64, ge=1, le=65536, description="Width of the dense layer before logits.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class ResNetStudent(_Strict):
    """A CIFAR-style ResNet (He et al. 2016): depth 6n+2, basic blocks, widths w, 2w, 4w."""

    arch: Literal["resnet"]
    depth: int = Field(8, ge=8, le=110, description="6n+2: 8, 14, 20, 32, 44, 56, 110.")
    width: int = Field(16, ge=4, le=256)

    @model_validator(mode="after")
    def _depth(self) -> ResNetStudent:
        if (self.depth - 2) % 6:
            raise ValueError(f"resnet depth must be 6n+2 (8, 14, 20, 32, ...), not {self.depth}")
        return self


class FromTeacherStudent(_Strict):
    """A Hugging Face teacher's own embeddings and chosen layers (DistilBERT's initialisation):
    `layers` by index, or every other layer when only `num_layers` is given."""

    arch: Literal["from_teacher"]
    layers: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        None, min_length=1, max_length=1024
    )
    num_layers: int | None = Field(None, ge=1, le=1024)

    @model_validator(mode="after")
    def _layers(self) -> FromTeacherStudent:
        if self.layers is None and self.num_layers is None:
            raise ValueError("a from_teacher student needs layers (indices) or num_layers")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise ValueError(f"from_teacher layers repeat an index: {self.layers}")
        if self.layers is not None and self.num_layers not in (None, len(self.layers)):
            raise ValueError("from_teacher num_layers must equal the number of layers given")
        return self


class HFStudent(_Strict):
    """A fresh Hugging Face model: the teacher's configuration with `config` overriding it
    (e.g. {"num_hidden_layers": 2, "hidden_size": 64}); it shares the teacher's tokenizer."""

    arch: Literal["hf"]
    config: dict[str, BoundedInt | BoundedFloat | Annotated[str, Field(max_length=200)] | bool] = (
        Field(default_factory=dict, max_length=64)
    )


class HFFileStudent(_Strict):
    """An uploaded smaller Hugging Face model (the teacher's ZIP layout) that shares the
    teacher's tokenizer; checked in validation (incompatible_models names a difference)."""

    arch: Literal["hf_file"]
    file_id: str = Field(min_length=1, max_length=64)


class FileStudent(_Strict):
    """A student brought as a TorchScript file: its architecture and initial weights."""

    arch: Literal["file"]
    file_id: str = Field(min_length=1, max_length=64)


def _check_arch(value: Any) -> Any:
    if isinstance(value, dict):
        arch = value.get("arch")
        if arch not in STUDENT_ARCHS:
            raise ValueError(
                f"unknown student arch {arch!r}; known archs: {', '.join(STUDENT_ARCHS)}"
            )
    return value


StudentSpec = Annotated[
    MLPStudent
    | CNNStudent
    | ResNetStudent
    | FileStudent
    | FromTeacherStudent
    | HFStudent
    | HFFileStudent,
    BeforeValidator(_check_arch),
    Field(discriminator="arch"),
]


class LossTerm(_Strict):
    """One weighted term of the loss; layers are module paths (see the teacher file's
    `details.layers`). A feature or relation term that names neither layer compares the
    penultimate features of both models (the inputs of their classifier heads); the report's
    `layer_pairing` says which."""

    kind: str
    weight: float = Field(1.0, ge=0.0, le=1e6)
    params: dict[str, BoundedFloat | BoundedInt | bool | Annotated[str, Field(max_length=100)]] = (
        Field(default_factory=dict, max_length=32)
    )
    teacher_layer: str | None = Field(None, max_length=500)
    student_layer: str | None = Field(None, max_length=500)

    @model_validator(mode="after")
    def _known(self) -> LossTerm:
        meta = loss_meta(self.kind)
        named = bool(self.teacher_layer and self.student_layer)
        if meta.needs_layers and (self.teacher_layer or self.student_layer) and not named:
            paired_by = "the layer map" if meta.layer_mapped else "the penultimate features"
            raise ValueError(
                f"loss {self.kind!r} needs both layers, or neither (then {paired_by} are "
                "paired): name teacher_layer and student_layer together"
            )
        if not meta.needs_layers and (self.teacher_layer or self.student_layer):
            raise ValueError(f"loss {self.kind!r} works on logits; it takes no layers")
        return self


# Consistent teaching for texts, chosen per task kind with its budget rule by measurement
# on that kind's tuning task (`python -m bench.suite_hf`; BENCHMARKS.md, "Transformer
# tasks"; a test keeps them in step): the share of a text's tokens replaced when the spec
# states none. Causal LMs: none (their texts are their targets).
DEFAULT_TOKEN_SHARES: dict[str, float] = {
    "sequence_classification": 0.3,
    "sentence_embedding": 0.15,
}
DEFAULT_TOKEN_SHARE = DEFAULT_TOKEN_SHARES["sequence_classification"]
TOKEN_NOISE_TASKS = tuple(DEFAULT_TOKEN_SHARES)


class AugmentSpec(_Strict):
    """Consistent teaching (Beyer et al. 2022): one augmented batch that teacher and
    student both see."""

    mixup: float = Field(0.0, ge=0.0, le=10.0, description="Beta(a, a) mixing; 0: off.")
    noise: float = Field(0.0, ge=0.0, le=10.0, description="Gaussian noise std; 0: off.")
    crop: int = Field(0, ge=0, le=64, description="Images: random crop after this padding.")
    flip: bool = Field(False, description="Images: random horizontal flip.")
    tokens: float | None = Field(
        None, ge=0.0, le=0.5,
        description="Texts (sequence classification, sentence embedding): share of each "
        "text's tokens replaced by random vocabulary tokens, the same corrupted text for "
        "teacher and student; 0: off; null: decided at the first claim, the task's measured "
        "default (0.3 for sequence classification, 0.15 for sentence embedding) when the "
        "epochs are planned, else off; never for causal LMs.",
    )  # fmt: skip

    def token_share(self, task: str) -> float:
        """The stated share, else the task's measured default (which the worker applies
        only with a planned schedule: worker.kd.tasks.transformer_job)."""
        if self.tokens is not None:
            return self.tokens
        return DEFAULT_TOKEN_SHARES.get(task, 0.0)

    @property
    def active(self) -> bool:
        """Tensor inputs are augmented (mixup, noise, crop or flip)."""
        return bool(self.mixup or self.noise or self.crop or self.flip)


class GenerationSpec(_Strict):
    """Sampling for causal-LM methods that generate (sequence, on_policy); the KD
    `temperature` is separate and keeps its meaning."""

    max_new_tokens: int = Field(32, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0.0, le=100.0, description="0: greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    completions_per_prompt: int = Field(1, ge=1, le=64)


class DistillationSpec(_Strict):
    """What the student learns from. Without `losses`, Hinton's response-based KD:
    alpha*T^2*KL(teacher_T || student_T) + (1-alpha)*CE(labels)."""

    temperature: float = Field(4.0, gt=0.0, le=100.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)
    losses: list[LossTerm] | None = Field(None, min_length=1, max_length=16)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    cache_teacher: bool = Field(
        True, description="Reuse teacher outputs across epochs and jobs when inputs are fixed."
    )
    method: Literal["logits", "top_k", "sequence", "on_policy"] = Field(
        "logits",
        description="Causal-LM jobs: logits (dense token-level KD), top_k (the teacher's "
        "top-k logits cached once), sequence (learn the teacher's generations), on_policy "
        "(GKD: student generations scored by the teacher, generalized JSD).",
    )
    top_k: int = Field(32, ge=1, le=4096, description="method top_k: logits kept per token.")
    lmbda: float = Field(
        0.5, ge=0.0, le=1.0, description="method on_policy: share of student-generated batches."
    )
    beta: float = Field(
        0.5, ge=0.0, le=1.0, description="method on_policy: 0 forward KL, 1 reverse KL."
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec)


PLANNED = (
    "Left out or null: planned by the worker from the data, the student and budget_seconds "
    "(event training_planned says what it chose)."
)
# What a planned field is when no rule plans it: transformer jobs' defaults, and the
# starting point of a search whose spec leaves the schedule open.
TRAINING_DEFAULTS: dict[str, Any] = {
    "epochs": 20, "batch_size": 64, "learning_rate": 1e-3, "weight_decay": 0.01,
    "schedule": "warmup_cosine", "warmup_fraction": 0.05,
}  # fmt: skip


class TrainingSpec(_Strict):
    """How the student trains. The schedule's fields (worker.kd.budget.PLANNED_FIELDS)
    default to None, "planned": the worker fills them in before training (the engine's
    `prepare`), stores them on the job, and the Trainer only ever sees numbers."""

    epochs: int | None = Field(None, ge=1, le=10000, description=PLANNED)
    batch_size: int | None = Field(None, ge=1, le=65536, description=PLANNED)
    learning_rate: float | None = Field(None, gt=0.0, le=10.0, description=PLANNED)
    weight_decay: float | None = Field(None, ge=0.0, le=10.0, description=PLANNED)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    val_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Held-out share when the dataset has no x_val."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_runtime_seconds: int | None = Field(
        None,
        ge=1,
        le=MAX_RUNTIME_SECONDS,
        description="Stop and fail the job (max_runtime_exceeded) after this long.",
    )
    budget_seconds: float = Field(
        600.0,
        gt=0.0,
        le=30 * 86400,
        description=(
            "Soft time target for planned training: when the epochs are left to the planner "
            "(worker.kd.budget), it plans no more than fit in this many seconds at the measured "
            "cost of a step. Unlike max_runtime_seconds (a hard stop that fails the job) and "
            "search.budget_seconds (a whole search's time), it never stops a run."
        ),
    )
    schedule: Literal["cosine", "warmup_cosine", "one_cycle", "constant"] | None = Field(
        None, description=PLANNED
    )
    warmup_fraction: float | None = Field(None, ge=0.0, lt=1.0, description=PLANNED)
    grad_clip: float | None = Field(1.0, gt=0.0, le=1e6)
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        le=10000,
        description="Stop after this many epochs without a better val accuracy.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU."
    )


class PlannedTraining(TrainingSpec):
    """A training section with its schedule chosen (no planned field left None): what the
    Trainer runs. `worker.kd.engine.prepare` makes one for every job."""

    epochs: int = Field(ge=1, le=10000)
    batch_size: int = Field(ge=1, le=65536)
    learning_rate: float = Field(gt=0.0, le=10.0)
    weight_decay: float = Field(ge=0.0, le=10.0)
    schedule: Literal["cosine", "warmup_cosine", "one_cycle", "constant"]
    warmup_fraction: float = Field(ge=0.0, lt=1.0)


def is_planned(training: TrainingSpec) -> bool:
    """True when every planned field has a value (nothing left for the planner)."""
    return all(getattr(training, name) is not None for name in TRAINING_DEFAULTS)


def planned_training(training: TrainingSpec) -> PlannedTraining:
    """The section as a PlannedTraining; a field still None is a ValidationError (the
    engine plans before anything trains, so that means a caller skipped `prepare`)."""
    if isinstance(training, PlannedTraining):
        return training
    return PlannedTraining.model_validate(training.model_dump())


def with_training_defaults(training: TrainingSpec) -> PlannedTraining:
    """The section with every planned field still None set to TRAINING_DEFAULTS (what a
    job gets where no rule applies: transformer jobs, a search's starting point)."""
    values = training.model_dump()
    values.update({k: v for k, v in TRAINING_DEFAULTS.items() if values[k] is None})
    return PlannedTraining.model_validate(values)


JobKind = Literal["tensor", "transformer"]

# Fields that apply to one kind of job only: a spec of the other kind that states one is a 422.
_FIELDS_FOR: dict[tuple[TaskKind, ...], set[str]] = {
    TENSOR_TASKS: {"teacher.arch", "dataset.image_size", "dataset.grayscale"},
    TRANSFORMER_TASKS: {"teacher.task", "dataset.max_length", "dataset.eval_file_id"},
}
# Fields of the causal-LM task only (checked against the teacher's task when it is known).
_CAUSAL_LM_FIELDS: tuple[str, ...] = (
    "distillation.method", "distillation.top_k", "distillation.lmbda", "distillation.beta",
    "distillation.generation", "dataset.eval_file_id",
)  # fmt: skip

# The per-epoch metrics a search selects on, first found first (classifiers write
# val_accuracy; sentence-embedding students val_cosine).
SEARCH_METRICS: tuple[str, ...] = ("val_accuracy", "val_cosine")


MAX_TRIALS = 200  # the most trials one search runs, named or not


class SearchSpec(_Strict):
    """Let it choose: run trials as child jobs over the recipe and the schedule
    (worker.search says which knobs), `parallel` at once, within `budget_seconds` of
    wall-clock time; the best trial's student becomes the job's. `trials` caps their
    number; left out, the budget alone bounds it: trials start while the budget left fits
    one (at most MAX_TRIALS)."""

    trials: int | None = Field(
        None,
        ge=2,
        le=MAX_TRIALS,
        description="Most trials the search runs; left out: as many as budget_seconds fits "
        f"(a new trial starts only while the budget left fits one; at most {MAX_TRIALS}).",
    )
    budget_seconds: int = Field(
        900, ge=10, le=7 * 24 * 3600, description="Wall-clock time for the whole search."
    )
    parallel: int = Field(1, ge=1, le=64, description="Trials run at once (one per worker).")

    @property
    def most_trials(self) -> int:
        """The trials the search may make: `trials`, or MAX_TRIALS when the budget bounds it."""
        return MAX_TRIALS if self.trials is None else self.trials

    @model_validator(mode="after")
    def _parallel(self) -> SearchSpec:
        if self.trials is not None and self.parallel > self.trials:
            raise ValueError(
                f"search.parallel ({self.parallel}) cannot exceed search.trials ({self.trials})"
            )
        return self


NO_TOKEN_NOISE_FOR_LM = (
    "distillation.augment.tokens applies to sequence_classification and sentence_embedding "
    "jobs; a causal LM's texts are its targets, so corrupting them changes what it learns: "
    "remove it"
)

# The recipe a job gets when its spec names no `distillation` at all, per kind of job.
# Tensor jobs: the one that measured best on the bench tasks (BENCHMARKS.md, "Default
# recipe"; `python -m bench.recipes`): consistent teaching, one mixed-up, noised batch seen
# by teacher and student alike. Transformer jobs: soft targets at T=1 with alpha 0.9, which
# beat T=4 there (bench/hf_recipes.py); texts are not augmented.
DEFAULT_RECIPES: dict[JobKind, dict[str, Any]] = {
    "tensor": {"temperature": 4.0, "alpha": 0.9, "augment": {"mixup": 0.4, "noise": 0.05}},
    "transformer": {"temperature": 1.0, "alpha": 0.9},
}
DEFAULT_RECIPE = DEFAULT_RECIPES["tensor"]


def job_kind_of(data: dict[str, Any]) -> JobKind:
    """A raw spec's kind: transformer when its student is built from a Hugging Face teacher
    (or the teacher is declared a model-directory ZIP), tensor otherwise."""
    student, teacher = data.get("student"), data.get("teacher")
    arch = student.get("arch") if isinstance(student, dict) else getattr(student, "arch", None)
    fmt = teacher.get("format") if isinstance(teacher, dict) else getattr(teacher, "format", None)
    return "transformer" if arch in TRANSFORMER_ARCHS or fmt == "hf_zip" else "tensor"


MAX_PROCESSES = 16  # one machine's worth of training processes (resources.processes)


class ResourcesSpec(_Strict):
    """Where the job runs: workers started with `--queues` naming `queue` take it."""

    queue: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$",
        description="The worker queue, e.g. a100; default: the server's queue.",
    )
    gpus: int = Field(0, ge=0, le=64, description="GPUs the job's worker must have.")
    processes: int = Field(
        1,
        ge=1,
        le=MAX_PROCESSES,
        description="Training processes on the worker's machine (torchrun, data parallel: the "
        "batch is split among them); tensor jobs only.",
    )


class JobSpec(_Strict):
    """A distillation job, smallest form: teacher, student, dataset."""

    @model_validator(mode="before")
    @classmethod
    def _default_recipe(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        stated = data.get("distillation")
        if stated is None:
            return {**data, "distillation": DEFAULT_RECIPES[job_kind_of(data)]}
        if isinstance(stated, dict) and job_kind_of(data) == "transformer":
            # A transformer section that states other fields (a causal LM's `method`,
            # `cache_teacher`, ...) keeps the measured temperature and alpha it leaves out.
            return {**data, "distillation": {**DEFAULT_RECIPES["transformer"], **stated}}
        return data

    teacher: TeacherSpec
    student: StudentSpec
    dataset: DatasetSpec
    distillation: DistillationSpec = Field(default_factory=DistillationSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    baseline: bool = Field(
        False, description="Also train the student without the teacher, same budget and seed."
    )
    keep: Literal["distilled", "best"] = Field(
        "distilled",
        description="best: the job's student is the better of student and baseline when the "
        "verdict is baseline_better (needs baseline: true); distilled: always the distilled one.",
    )
    search: SearchSpec | None = Field(
        None, description="Search the recipe and schedule under a budget (README: Let it choose)."
    )

    @model_validator(mode="after")
    def _keep_needs_a_baseline(self) -> JobSpec:
        if self.keep == "best" and not self.baseline:
            raise ValueError(
                'keep: "best" chooses between the distilled student and the baseline: '
                "set baseline: true, or remove keep"
            )
        return self

    @property
    def kind(self) -> JobKind:
        return job_kind_of({"student": self.student, "teacher": self.teacher})

    def task_kinds(self) -> tuple[TaskKind, ...]:
        """The task kinds this job can be: one for a tensor job or a transformer job whose
        teacher.task is given; every transformer task while the model ZIP has not said."""
        if self.kind == "tensor":
            return TENSOR_TASKS
        return (self.teacher.task,) if self.teacher.task else TRANSFORMER_TASKS

    def _fields_set(self) -> set[str]:
        """The dotted names of the teacher, dataset and distillation fields the spec states
        with a value other than the default (a stored spec, dumped whole, states every
        field); a teacher's inline architecture fields (extras) count as stated."""
        stated = set()
        sections = (
            ("teacher", self.teacher), ("dataset", self.dataset),
            ("distillation", self.distillation),
        )  # fmt: skip
        for section, part in sections:
            fields = type(part).model_fields
            for name in part.model_fields_set:
                field = fields.get(name)
                if field is None or getattr(part, name) != field.get_default(
                    call_default_factory=True
                ):
                    stated.add(f"{section}.{name}")
        return stated

    @model_validator(mode="after")
    def _fits_task(self) -> JobSpec:
        """Each field a job sets applies to its task kind; a 422 says which kinds it is for."""
        tasks = self.task_kinds()
        only = TENSOR_TASKS if self.kind == "transformer" else TRANSFORMER_TASKS
        for field in sorted(_FIELDS_FOR[only] & self._fields_set()):
            raise ValueError(
                f"{field} applies to {', '.join(only)} jobs only, not to {' or '.join(tasks)}: "
                f"remove it"
            )
        if "causal_lm" not in tasks:
            for field in sorted(set(_CAUSAL_LM_FIELDS) & self._fields_set()):
                raise ValueError(
                    f"{field} applies to causal_lm jobs only (a Hugging Face causal-LM "
                    f"teacher), not to {' or '.join(tasks)}: remove it"
                )
        augment = self.distillation.augment
        if self.kind == "transformer" and augment.active:
            raise ValueError(
                "distillation.augment.mixup, noise, crop and flip apply to "
                "tensor_classification jobs only (inputs that can be mixed, noised, cropped "
                "or flipped); a transformer job's texts take distillation.augment.tokens: "
                "remove the others"
            )
        if augment.tokens and self.kind == "tensor":
            raise ValueError(
                "distillation.augment.tokens applies to transformer jobs only (texts): "
                "remove it, or use mixup, noise, crop or flip"
            )
        if augment.tokens and tasks == ("causal_lm",):
            raise ValueError(NO_TOKEN_NOISE_FOR_LM)
        if self.kind == "transformer" and self.resources.processes > 1:
            raise ValueError(
                "resources.processes > 1 applies to tensor_classification jobs only; a "
                "transformer job trains on one process: remove resources.processes"
            )
        for index, term in enumerate(self.distillation.losses or []):
            meta = loss_meta(term.kind)
            if not set(tasks) & set(meta.task_kinds):
                usable = sorted({name for task in tasks for name in losses_for(task)})
                raise ValueError(
                    f"distillation.losses[{index}]: loss {term.kind!r} applies to "
                    f"{', '.join(meta.task_kinds)} jobs, not to {' or '.join(tasks)}; "
                    f"use one of {', '.join(usable)}"
                )
        return self

    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
