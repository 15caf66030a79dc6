"""NPZ datasets: arrays `x`, optional `y`, `x_val`, `y_val`, read without unpickling."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from worker.kd.datasets.base import Arrays, DatasetLimits, check_size
from worker.kd.errors import InvalidDataset, shorten

SAVE_HINT = "Save it with np.savez(path, x=features, y=labels)."
KNOWN_ARRAYS = ("x", "y", "x_val", "y_val")


def read_npz(path: Path, limits: DatasetLimits) -> Arrays:
    """The known arrays of an NPZ file, sized from their headers before they are loaded."""
    check_npz_headers(path, limits)
    arrays = load_arrays(path)
    return Arrays(
        arrays["x"], arrays.get("y"), arrays.get("x_val"), arrays.get("y_val"), class_names=None
    )


def load_arrays(path: Path) -> dict[str, np.ndarray]:
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


def check_npz_headers(path: Path, limits: DatasetLimits) -> None:
    """Refuse feature arrays past the limits from their .npy headers alone. A header that
    cannot be read is left to the loader, whose errors say more."""
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in ("x", "x_val"):
                if f"{name}.npy" in archive.namelist():
                    with archive.open(f"{name}.npy") as handle:
                        shapes[name] = _header_shape(handle)
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    samples = sum(shape[0] for shape in shapes.values() if shape)
    features = max((math.prod(shape[1:]) for shape in shapes.values() if shape), default=0)
    check_size(samples, features, limits)


def _header_shape(handle: IO[bytes]) -> tuple[int, ...]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, _, _ = np.lib.format.read_array_header_2_0(handle)
    return tuple(shape)
