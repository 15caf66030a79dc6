"""Dataset loading: an NPZ of arrays in, checked tensors split into train and validation out.

Files are read with `allow_pickle=False`: an uploaded file is never unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from worker.kd.errors import InvalidDataset
from worker.kd.text import fmt_shape, shorten

SAVE_HINT = "Save it with np.savez(path, x=features, y=labels)."
KNOWN_ARRAYS = ("x", "y", "x_val", "y_val")


@dataclass
class Splits:
    """Train and validation tensors; labels are None where the dataset has none."""

    x_train: torch.Tensor  # (N, *input_shape) float32
    y_train: torch.Tensor | None  # (N,) int64
    x_val: torch.Tensor  # (M, *input_shape) float32
    y_val: torch.Tensor | None  # (M,) int64
    source: Literal["x_val", "split"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def max_label(self) -> int | None:
        """The largest label in either split, or None when there are no labels."""
        present = [y for y in (self.y_train, self.y_val) if y is not None and y.numel() > 0]
        return max(int(y.max()) for y in present) if present else None


def load_dataset(path: Path, val_fraction: float, seed: int) -> Splits:
    """Read and check an NPZ; split off `val_fraction` (seeded) when it has no `x_val`."""
    arrays = read_npz(path)
    x = check_features("x", arrays["x"])
    y = check_labels("y", arrays["y"], len(x)) if "y" in arrays else None
    if "x_val" not in arrays:
        if "y_val" in arrays:
            raise InvalidDataset("The dataset has 'y_val' but no 'x_val'. " + SAVE_HINT)
        return split(x, y, val_fraction, seed)
    x_val = check_features("x_val", arrays["x_val"])
    if x_val.shape[1:] != x.shape[1:]:
        raise InvalidDataset(
            f"'x_val' samples have shape {fmt_shape(x_val.shape[1:])} but 'x' samples have shape "
            f"{fmt_shape(x.shape[1:])}; they must match."
        )
    y_val = check_labels("y_val", arrays["y_val"], len(x_val)) if "y_val" in arrays else None
    return Splits(x, y, x_val, y_val, source="x_val")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The known arrays of an NPZ file, loaded without unpickling anything."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidDataset(
            f"The dataset file is not a readable .npz archive ({shorten(exc)}). {SAVE_HINT}"
        ) from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InvalidDataset(f"The dataset file is a single .npy array, not an .npz. {SAVE_HINT}")
    with loaded:
        if "x" not in loaded.files:
            found = ", ".join(loaded.files) or "no arrays"
            raise InvalidDataset(f"The dataset has no array named 'x'; found: {found}. {SAVE_HINT}")
        return {name: _read_array(loaded, name) for name in KNOWN_ARRAYS if name in loaded.files}


def _read_array(archive: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    try:
        return np.asarray(archive[name])
    except ValueError as exc:
        raise InvalidDataset(
            f"Array '{name}' cannot be read without unpickling ({shorten(exc)}). Object arrays "
            f"are refused; store plain numeric arrays. {SAVE_HINT}"
        ) from exc


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
    x = array.astype(np.float32)
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
