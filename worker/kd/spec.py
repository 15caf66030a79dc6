"""The job spec: what a user asks for, validated before anything runs.

This module is shared by the API (which validates a spec at submit time, without torch)
and the engine (which runs it), so it imports pydantic and nothing heavier.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

STUDENT_ARCHS: tuple[str, ...] = ("cnn", "file", "mlp", "resnet", "from_teacher", "hf")
# Students of Hugging Face teachers only (worker.kd.hf).
TRANSFORMER_ARCHS: tuple[str, ...] = ("from_teacher", "hf")
TRANSFORMER_TASKS: tuple[str, ...] = ("sequence_classification", "sentence_embedding", "causal_lm")
TEACHER_FORMATS: tuple[str, ...] = ("torchscript", "torch_export", "onnx", "safetensors", "hf_zip")
DATASET_FORMATS: tuple[str, ...] = ("npz", "csv", "image_zip", "jsonl", "text")
BUILTIN_DATASETS: tuple[str, ...] = ("digits",)
# The names registered in worker.kd.losses (a test keeps the two in step).
LOSS_KINDS: tuple[str, ...] = (
    "attention", "ce", "cosine", "dkd", "embedding_mse", "hidden_cosine", "hint", "hinton",
    "kd", "logit_mse", "pkt", "rkd_angle", "rkd_distance", "self_attention_kl", "soft_ce", "sp",
)  # fmt: skip
LAYER_LOSSES: tuple[str, ...] = (
    "attention", "cosine", "hidden_cosine", "hint", "pkt", "rkd_angle", "rkd_distance",
    "self_attention_kl", "sp",
)  # fmt: skip
# Transformer layer losses whose layers default to the student's layer map when not named.
MAPPED_LAYER_LOSSES: tuple[str, ...] = ("hidden_cosine", "self_attention_kl")


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
    config: dict[str, int | float | str | bool] = Field(default_factory=dict, max_length=64)


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
    MLPStudent | CNNStudent | ResNetStudent | FileStudent | FromTeacherStudent | HFStudent,
    BeforeValidator(_check_arch),
    Field(discriminator="arch"),
]


class LossTerm(_Strict):
    """One weighted term of the loss; layers are module paths (see the teacher file's
    `details.layers`)."""

    kind: str
    weight: float = Field(1.0, ge=0.0, le=1e6)
    params: dict[str, float | int | bool | Annotated[str, Field(max_length=100)]] = Field(
        default_factory=dict
    )
    teacher_layer: str | None = Field(None, max_length=500)
    student_layer: str | None = Field(None, max_length=500)

    @model_validator(mode="after")
    def _known(self) -> LossTerm:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss kind {self.kind!r}; known: {', '.join(LOSS_KINDS)}")
        named = bool(self.teacher_layer and self.student_layer)
        if self.kind in MAPPED_LAYER_LOSSES:
            if (self.teacher_layer or self.student_layer) and not named:
                raise ValueError(f"loss {self.kind!r} needs both layers, or neither (layer map)")
        elif self.kind in LAYER_LOSSES and not named:
            raise ValueError(f"loss {self.kind!r} needs teacher_layer and student_layer")
        if self.kind not in LAYER_LOSSES and (self.teacher_layer or self.student_layer):
            raise ValueError(f"loss {self.kind!r} works on logits; it takes no layers")
        return self


class AugmentSpec(_Strict):
    """Consistent teaching (Beyer et al. 2022): one augmented batch that teacher and
    student both see."""

    mixup: float = Field(0.0, ge=0.0, le=10.0, description="Beta(a, a) mixing; 0: off.")
    noise: float = Field(0.0, ge=0.0, le=10.0, description="Gaussian noise std; 0: off.")
    crop: int = Field(0, ge=0, le=64, description="Images: random crop after this padding.")
    flip: bool = Field(False, description="Images: random horizontal flip.")

    @property
    def active(self) -> bool:
        return bool(self.mixup or self.noise or self.crop or self.flip)


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


class TrainingSpec(_Strict):
    epochs: int = Field(20, ge=1, le=10000)
    batch_size: int = Field(64, ge=1, le=65536)
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(0.01, ge=0.0, le=10.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    val_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Held-out share when the dataset has no x_val."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_runtime_seconds: int | None = Field(
        None, ge=1, description="Stop and fail the job (max_runtime_exceeded) after this long."
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
    schedule: Literal["cosine", "warmup_cosine", "one_cycle", "constant"] = "warmup_cosine"
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0, le=1e6)
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a better val accuracy."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU."
    )


# The recipe a job gets when its spec names no `distillation` at all: the one that measured
# best on the bench tasks (BENCHMARKS.md, "Default recipe"; `python -m bench.recipes`):
# consistent teaching, one mixed-up, noised batch seen by teacher and student alike.
DEFAULT_RECIPE: dict[str, Any] = {
    "temperature": 4.0,
    "alpha": 0.9,
    "augment": {"mixup": 0.4, "noise": 0.05},
}


class JobSpec(_Strict):
    """A distillation job, smallest form: teacher, student, dataset."""

    @model_validator(mode="before")
    @classmethod
    def _default_recipe(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("distillation") is None:
            return {**data, "distillation": DEFAULT_RECIPE}
        return data

    teacher: TeacherSpec
    student: StudentSpec
    dataset: DatasetSpec
    distillation: DistillationSpec = Field(default_factory=DistillationSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    baseline: bool = Field(
        False, description="Also train the student without the teacher, same budget and seed."
    )
