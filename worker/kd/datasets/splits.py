"""Dataset loading: a file (NPZ, CSV or image-folder ZIP) or a builtin dataset in, checked
tensors split into training, selection and evaluation data out.

Selection data (`x_val`) chooses: the best epoch, early stopping, a search's trials.
Evaluation data (`x_eval`) is touched by no choice; the report's headline figures are
measured on it alone. Which arrays play which part:

| the dataset has | selection | evaluation |
| --- | --- | --- |
| `x_test` (NPZ) | `x_val`, or carved from the training data | `x_test` |
| `x_val` but no `x_test` (NPZ) | carved from the training data | `x_val` |
| neither (NPZ, CSV, image ZIP, builtin) | carved from the training data | carved from the data |

Carving is seeded (`split_indices`): evaluation first, from all the data, then selection
from what is left, so the three parts are disjoint.

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

__all__ = [
    "DatasetLimits",
    "EvaluationSplit",
    "Splits",
    "load_dataset",
    "split",
    "split_indices",
]

EvaluationSplit = Literal["x_test", "x_val", "carved"]
# "x_train": too few training samples to carve selection data from, so the training data
# selects (the evaluation data is still held out).
SelectionSplit = Literal["x_val", "carved", "x_train"]


@dataclass
class Splits:
    """Training, selection (`x_val`) and evaluation (`x_eval`) tensors, disjoint; labels are
    None where the dataset has none."""

    x_train: torch.Tensor  # (N, *input_shape) float32
    y_train: torch.Tensor | None  # (N,) int64
    x_val: torch.Tensor  # (M, *input_shape) float32, selection
    y_val: torch.Tensor | None  # (M,) int64
    x_eval: torch.Tensor  # (E, *input_shape) float32, evaluation: never used for a choice
    y_eval: torch.Tensor | None  # (E,) int64
    selection: SelectionSplit
    evaluation: EvaluationSplit
    class_names: list[str] | None = None  # label index -> name, where the dataset names them

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def source(self) -> Literal["x_test", "x_val", "split"]:
        """Where the evaluation data came from, in the words reports have always used
        (`split`: carved from the data)."""
        return "split" if self.evaluation == "carved" else self.evaluation

    @property
    def samples(self) -> int:
        return len(self.x_train) + len(self.x_val) + len(self.x_eval)

    def labels(self) -> list[torch.Tensor]:
        """The label tensors of every split that has labels."""
        return [y for y in (self.y_train, self.y_val, self.y_eval) if y is not None]

    def max_label(self) -> int | None:
        """The largest label in any split, or None when there are no labels."""
        present = [y for y in self.labels() if y.numel() > 0]
        return max(int(y.max()) for y in present) if present else None


def load_dataset(
    spec: DatasetSpec,
    path: Path | None,
    val_fraction: float,
    seed: int,
    limits: DatasetLimits = DatasetLimits(),
) -> Splits:
    """Read and check the dataset `spec` names (`path` is its file, None for a builtin),
    and split it into training, selection and evaluation data by the rules above
    (`val_fraction` of the data for each carved part, seeded)."""
    arrays = read_arrays(spec, path, limits)
    x = check_features("x", arrays.x)
    y = check_labels("y", arrays.y, len(x)) if arrays.y is not None else None
    x_val, y_val = _held_out(arrays.x_val, arrays.y_val, "val", x)
    x_test, y_test = _held_out(arrays.x_test, arrays.y_test, "test", x)
    if x_test is not None:
        if x_val is not None:
            data = Splits(x, y, x_val, y_val, x_test, y_test, "x_val", "x_test")
        else:
            data = _carve_selection(x, y, x_test, y_test, "x_test", val_fraction, seed)
    elif x_val is not None:
        data = _carve_selection(x, y, x_val, y_val, "x_val", val_fraction, seed)
    else:
        data = split(x, y, val_fraction, seed)
    return replace(data, class_names=arrays.class_names)


def _held_out(
    x: np.ndarray | None, y: np.ndarray | None, suffix: str, x_train: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The dataset's own `x_<suffix>`, `y_<suffix>` arrays, checked against `x`."""
    name = f"x_{suffix}"
    if x is None:
        if y is not None:
            raise InvalidDataset(f"The dataset has 'y_{suffix}' but no '{name}'. " + SAVE_HINT)
        return None, None
    features = check_features(name, x)
    if features.shape[1:] != x_train.shape[1:]:
        raise InvalidDataset(
            f"'{name}' samples have shape {fmt_shape(features.shape[1:])} but 'x' samples have "
            f"shape {fmt_shape(x_train.shape[1:])}; they must match."
        )
    labels = check_labels(f"y_{suffix}", y, len(features)) if y is not None else None
    return features, labels


def _carve_selection(
    x: torch.Tensor,
    y: torch.Tensor | None,
    x_eval: torch.Tensor,
    y_eval: torch.Tensor | None,
    evaluation: EvaluationSplit,
    val_fraction: float,
    seed: int,
) -> Splits:
    """The dataset's own evaluation arrays; selection data carved from the training data
    (or the training data itself, when it has fewer than 2 samples)."""
    if len(x) < 2:
        return Splits(x, y, x, y, x_eval, y_eval, "x_train", evaluation)
    train, val = (torch.from_numpy(i) for i in split_indices(len(x), val_fraction, seed))
    y_train, y_val = (None, None) if y is None else (y[train], y[val])
    return Splits(x[train], y_train, x[val], y_val, x_eval, y_eval, "carved", evaluation)


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
    """Carve evaluation data (`val_fraction` of all, seeded), then selection data
    (`val_fraction` of the rest, seed + 1) from a dataset that has neither; at least one
    sample is held out for evaluation."""
    rest, held = split_indices(len(x), val_fraction, seed)
    if len(rest) < 2:
        x_test, y_test = x[torch.from_numpy(held)], None if y is None else y[torch.from_numpy(held)]
        x_rest, y_rest = x[torch.from_numpy(rest)], None if y is None else y[torch.from_numpy(rest)]
        return Splits(x_rest, y_rest, x_rest, y_rest, x_test, y_test, "x_train", "carved")
    train_pos, val_pos = split_indices(len(rest), val_fraction, seed + 1)
    train, val, test = (torch.from_numpy(i) for i in (rest[train_pos], rest[val_pos], held))
    if y is None:
        return Splits(x[train], None, x[val], None, x[test], None, "carved", "carved")
    return Splits(x[train], y[train], x[val], y[val], x[test], y[test], "carved", "carved")
