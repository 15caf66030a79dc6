"""The job spec: what a user asks for, validated before anything runs.

This module is shared by the API (which validates a spec at submit time, without torch)
and the engine (which runs it), so it imports pydantic and nothing heavier.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

STUDENT_ARCHS: tuple[str, ...] = ("cnn", "mlp")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileRef(_Strict):
    file_id: str = Field(min_length=1, max_length=64, description="An uploaded file's id.")


class TeacherSpec(FileRef):
    """The teacher: an uploaded TorchScript module mapping a batch of inputs to logits."""


class DatasetSpec(FileRef):
    """The dataset: an uploaded NPZ with `x`, optional `y`, and optional `x_val`, `y_val`."""


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


def _check_arch(value: Any) -> Any:
    if isinstance(value, dict):
        arch = value.get("arch")
        if arch not in STUDENT_ARCHS:
            raise ValueError(
                f"unknown student arch {arch!r}; known archs: {', '.join(STUDENT_ARCHS)}"
            )
    return value


StudentSpec = Annotated[
    MLPStudent | CNNStudent, BeforeValidator(_check_arch), Field(discriminator="arch")
]


class DistillationSpec(_Strict):
    """Hinton's response-based KD: alpha*T^2*KL(teacher_T || student_T) + (1-alpha)*CE(labels)."""

    temperature: float = Field(4.0, gt=0.0, le=100.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)


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


class JobSpec(_Strict):
    """A distillation job, smallest form: teacher, student, dataset."""

    teacher: TeacherSpec
    student: StudentSpec
    dataset: DatasetSpec
    distillation: DistillationSpec = Field(default_factory=DistillationSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
