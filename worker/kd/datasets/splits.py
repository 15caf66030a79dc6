"""Dataset loading: a file (NPZ, CSV or image-folder ZIP) or a builtin dataset in, checked
tensors split into train and validation out.

`format: auto` is decided by the file's bytes, never its name. Uploaded files are never
unpickled (NPZ arrays are read with `allow_pickle=False`), and every format is read within
`DatasetLimits`, checked before the bulk of the data is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from worker.kd.datasets.base import Arrays, DatasetLimits, check_file_size
from worker.kd.datasets.builtin import load_builtin
from worker.kd.datasets.images import read_image_zip
from worker.kd.datasets.npz import SAVE_HINT, read_npz
from worker.kd.datasets.table import read_csv
from worker.kd.errors import InvalidDataset, fmt_shape
from worker.kd.formats import ACCEPTED, sniff_dataset
from worker.kd.spec import DatasetSpec

__all__ = ["DatasetLimits", "Splits", "load_dataset", "split", "split_indices"]


@dataclass
class Splits:
    """Train and validation tensors; labels are None where the dataset has none."""

    x_train: torch.Tensor  # (N, *input_shape) float32
    y_train: torch.Tensor | None  # (N,) int64
    x_val: torch.Tensor  # (M, *input_shape) float32
    y_val: torch.Tensor | None  # (M,) int64
    source: Literal["x_val", "split"]
    class_names: list[str] | None = None  # label index -> name, where the dataset names them

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def max_label(self) -> int | None:
        """The largest label in either split, or None when there are no labels."""
        present = [y for y in (self.y_train, self.y_val) if y is not None and y.numel() > 0]
        return max(int(y.max()) for y in present) if present else None


def load_dataset(
    spec: DatasetSpec,
    path: Path | None,
    val_fraction: float,
    seed: int,
    limits: DatasetLimits = DatasetLimits(),
) -> Splits:
    """Read and check the dataset `spec` names (`path` is its file, None for a builtin);
    split off `val_fraction` (seeded) when it has no `x_val`."""
    arrays = read_arrays(spec, path, limits)
    x = check_features("x", arrays.x)
    y = check_labels("y", arrays.y, len(x)) if arrays.y is not None else None
    if arrays.x_val is None:
        if arrays.y_val is not None:
            raise InvalidDataset("The dataset has 'y_val' but no 'x_val'. " + SAVE_HINT)
        return replace(split(x, y, val_fraction, seed), class_names=arrays.class_names)
    x_val = check_features("x_val", arrays.x_val)
    if x_val.shape[1:] != x.shape[1:]:
        raise InvalidDataset(
            f"'x_val' samples have shape {fmt_shape(x_val.shape[1:])} but 'x' samples have shape "
            f"{fmt_shape(x.shape[1:])}; they must match."
        )
    y_val = check_labels("y_val", arrays.y_val, len(x_val)) if arrays.y_val is not None else None
    return Splits(x, y, x_val, y_val, source="x_val", class_names=arrays.class_names)


def read_arrays(spec: DatasetSpec, path: Path | None, limits: DatasetLimits) -> Arrays:
    """The dataset's arrays, by the reader for its format."""
    if spec.builtin is not None:
        return load_builtin(spec.builtin)
    if path is None:
        raise InvalidDataset("The dataset names an uploaded file, but no file was given.")
    path = Path(path)
    check_file_size(path, limits)
    fmt = spec.format if spec.format != "auto" else sniff_dataset(path)
    if fmt == "npz":
        return read_npz(path, limits)
    if fmt == "csv":
        return read_csv(path, spec.label_column, limits)
    if fmt in ("image_zip", "zip"):  # a ZIP of neither arrays nor images: the reader says so
        return read_image_zip(path, spec.image_size, spec.grayscale, limits)
    if fmt == "npy":
        raise InvalidDataset(f"The dataset file is a single .npy array, not an .npz. {SAVE_HINT}")
    raise InvalidDataset(
        f"The dataset file is not a readable .npz archive, CSV file or image ZIP; a dataset "
        f"is {ACCEPTED}."
    )


def check_features(name: str, array: np.ndarray) -> torch.Tensor:
    """A numeric, finite array of at least 2 samples, as float32 of shape (N, *input_shape)."""
    if array.dtype.kind not in "biuf":
        raise InvalidDataset(f"Array '{name}' has dtype {array.dtype}; it must be numeric.")
    if array.ndim < 2:
        raise InvalidDataset(
            f"Array '{name}' has shape {fmt_shape(array.shape)}; it must be shaped "
            "(samples, features...), e.g. reshape a 1-D array with x.reshape(-1, 1)."
        )
    if len(array) < 2:
        raise InvalidDataset(f"Array '{name}' has {len(array)} sample(s); at least 2 are needed.")
    x = array.astype(np.float32, copy=False)
    _check_finite(name, x)
    return torch.from_numpy(x)


def _check_finite(name: str, x: np.ndarray) -> None:
    bad = ~np.isfinite(x.reshape(len(x), -1))  # (N, D)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    shown = ", ".join(str(i) for i in rows[:5]) + (", ..." if len(rows) > 5 else "")
    raise InvalidDataset(
        f"Array '{name}' has {int(bad.sum())} NaN or infinite value(s) (or values too large for "
        f"float32) in {len(rows)} sample(s), at indices {shown}. Remove or impute them."
    )


def check_labels(name: str, array: np.ndarray, n_samples: int) -> torch.Tensor:
    """Integer-valued, non-negative class labels, one per sample, as int64 of shape (N,)."""
    if array.ndim != 1:
        raise InvalidDataset(
            f"Array '{name}' has shape {fmt_shape(array.shape)}; labels must be 1-D class indices "
            "(use y.argmax(axis=1) for one-hot labels)."
        )
    if len(array) != n_samples:
        features = "x_val" if name == "y_val" else "x"
        raise InvalidDataset(
            f"'{name}' has {len(array)} labels but '{features}' has {n_samples} samples; "
            "they must have the same length."
        )
    if array.dtype.kind not in "iuf" or (
        array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array)))
    ):
        raise InvalidDataset(
            f"Array '{name}' (dtype {array.dtype}) must hold integer class indices 0..K-1."
        )
    if len(array) and array.min() < 0:
        raise InvalidDataset(f"Array '{name}' has negative labels (min {array.min()}).")
    return torch.from_numpy(array.astype(np.int64))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, val) indices; at least one sample on each side. Public so users can
    reproduce the validation set the report was measured on."""
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return order[n_val:], order[:n_val]


def split(x: torch.Tensor, y: torch.Tensor | None, val_fraction: float, seed: int) -> Splits:
    train, val = (torch.from_numpy(i) for i in split_indices(len(x), val_fraction, seed))
    y_train, y_val = (None, None) if y is None else (y[train], y[val])
    return Splits(x[train], y_train, x[val], y_val, source="split")
