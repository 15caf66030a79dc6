"""What every reader returns, and the bounds it reads within."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.kd.datasets.archives import ArchiveLimits
from worker.kd.errors import InvalidDataset

NON_IMAGE_MEMBERS = 10_000  # room for folders and stray files beside max_images


@dataclass(frozen=True)
class DatasetLimits:
    """Bounds on what a dataset may hold, checked before the bulk of it is decoded."""

    max_file_bytes: int = 8 * 1024**3  # the file, and a ZIP's unpacked members
    max_samples: int = 10_000_000
    max_features: int = 4_000_000  # values per sample; a 3x1024x1024 image is 3,145,728
    max_tensor_bytes: int = 8 * 1024**3  # the decoded float32 features, all samples
    max_images: int = 500_000
    max_image_pixels: int = 64_000_000  # per image, before resizing: under Pillow's own guard


@dataclass
class Arrays:
    """A dataset as read from its file, before the checks common to every format."""

    x: np.ndarray  # (N, *input_shape)
    y: np.ndarray | None = None  # (N,)
    x_val: np.ndarray | None = None  # (M, *input_shape)
    y_val: np.ndarray | None = None  # (M,)
    class_names: list[str] | None = None
    x_test: np.ndarray | None = None  # (E, *input_shape)
    y_test: np.ndarray | None = None  # (E,)


def over_limit(what: str, count: int, limit: int, name: str) -> InvalidDataset:
    """The error for a dataset past one of its limits, naming the limit."""
    return InvalidDataset(
        f"The dataset has {count:,} {what}; at most {limit:,} are accepted (limit {name})."
    )


def check_file_size(path: Path, limits: DatasetLimits) -> None:
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise InvalidDataset(
            f"The dataset file is {size:,} bytes; at most {limits.max_file_bytes:,} are "
            "accepted (limit max_file_bytes)."
        )


def check_size(samples: int, features: int, limits: DatasetLimits) -> None:
    """Refuse `samples` x `features` float32 values past the limits, before decoding them."""
    if samples > limits.max_samples:
        raise over_limit("samples", samples, limits.max_samples, "max_samples")
    if features > limits.max_features:
        raise over_limit("values per sample", features, limits.max_features, "max_features")
    tensor_bytes = samples * features * 4
    if tensor_bytes > limits.max_tensor_bytes:
        raise InvalidDataset(
            f"The dataset decodes to {tensor_bytes:,} bytes of float32 ({samples:,} samples of "
            f"{features:,} values); at most {limits.max_tensor_bytes:,} are accepted "
            "(limit max_tensor_bytes)."
        )


def image_archive_limits(limits: DatasetLimits) -> ArchiveLimits:
    """The bounds an image ZIP's entries are checked against."""
    return ArchiveLimits(
        max_members=limits.max_images + NON_IMAGE_MEMBERS, max_total_bytes=limits.max_file_bytes
    )
