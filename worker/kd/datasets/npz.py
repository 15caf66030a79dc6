"""NPZ datasets: arrays `x`, optional `y`, `x_val`, `y_val`, `x_test`, `y_test`, read without
unpickling (which of them select and which evaluate: `worker.kd.datasets.splits`).

Every member's .npy header is read and checked before any array is loaded: its dtype must
be plain numbers (no objects, no raw `void` records), its declared size within the limits,
and the member must hold all the bytes the header promises (else the file was truncated).
A small compressed file can declare gigabytes; nothing is decompressed until it passes.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from worker.kd.datasets.base import Arrays, DatasetLimits, check_size
from worker.kd.errors import InvalidDataset, shorten

SAVE_HINT = "Save it with np.savez(path, x=features, y=labels)."
KNOWN_ARRAYS = ("x", "y", "x_val", "y_val", "x_test", "y_test")
NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


@dataclass(frozen=True)
class NpyHeader:
    """What one member's .npy header declares."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data_bytes: int  # prod(shape) * itemsize
    missing_bytes: int  # bytes the header promises that the member does not hold


def read_npz(path: Path, limits: DatasetLimits) -> Arrays:
    """The known arrays of an NPZ file, sized from their headers before they are loaded."""
    check_npz_headers(path, limits)
    arrays = load_arrays(path)
    return Arrays(
        arrays["x"],
        arrays.get("y"),
        arrays.get("x_val"),
        arrays.get("y_val"),
        class_names=None,
        x_test=arrays.get("x_test"),
        y_test=arrays.get("y_test"),
    )


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The known arrays of an NPZ file, loaded without unpickling anything."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidDataset(
            f"The dataset file is not a readable .npz archive ({shorten(exc)}); it may be "
            f"truncated. {SAVE_HINT}"
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
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        if "EOF" in str(exc) or isinstance(exc, (EOFError, zipfile.BadZipFile)):
            raise InvalidDataset(
                f"Array '{name}' is truncated ({shorten(exc)}): upload the whole file again."
            ) from exc
        raise InvalidDataset(
            f"Array '{name}' cannot be read without unpickling ({shorten(exc)}). Object arrays "
            f"are refused; store plain numeric arrays. {SAVE_HINT}"
        ) from exc


def read_npz_headers(path: Path) -> dict[str, NpyHeader]:
    """Every member's header, by array name; reads headers only, never array data."""
    headers: dict[str, NpyHeader] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                name = member.filename.removesuffix(".npy")
                with archive.open(member) as handle:
                    headers[name] = _read_header(handle, name, member.file_size)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InvalidDataset(
            f"The dataset file is not a readable .npz archive ({shorten(exc)}); it may be "
            f"truncated. {SAVE_HINT}"
        ) from exc
    return headers


def _read_header(handle: IO[bytes], name: str, member_bytes: int) -> NpyHeader:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    except ValueError as exc:
        raise InvalidDataset(
            f"Array {name!r} has an unreadable .npy header ({shorten(exc)}). {SAVE_HINT}"
        ) from exc
    header_bytes = handle.tell()
    data_bytes = math.prod(shape) * dtype.itemsize
    missing = max(0, header_bytes + data_bytes - member_bytes) if not dtype.hasobject else 0
    return NpyHeader(name, tuple(shape), dtype, data_bytes, missing)


def check_array_header(header: NpyHeader, limits: DatasetLimits) -> None:
    """Refuse one array by its header: objects, non-numeric dtypes, past the size limit, or
    truncated."""
    name, dtype = header.name, header.dtype
    if dtype.hasobject:
        raise InvalidDataset(
            f"Array {name!r} holds Python objects. Object arrays are refused (Distillery "
            f"never unpickles uploads); store plain numeric arrays (float or int). {SAVE_HINT}"
        )
    if dtype.kind not in NUMERIC_KINDS:
        raise InvalidDataset(
            f"Array {name!r} has dtype {dtype.str!r}; its values must be numeric (bool, int "
            f"or float). {SAVE_HINT}"
        )
    if header.data_bytes > limits.max_tensor_bytes:
        raise InvalidDataset(
            f"Array {name!r} declares {header.data_bytes:,} bytes (shape {header.shape}, dtype "
            f"{dtype.str}); at most {limits.max_tensor_bytes:,} are accepted "
            "(limit max_tensor_bytes)."
        )
    if header.missing_bytes:
        raise InvalidDataset(
            f"Array {name!r} is truncated: its header declares {header.data_bytes:,} bytes of "
            f"data but {header.missing_bytes:,} of them are missing; upload the whole file again."
        )


def check_npz_headers(path: Path, limits: DatasetLimits) -> None:
    """Refuse the file from its .npy headers alone: every array's dtype and size, then the
    feature arrays' samples x values against the limits."""
    headers = read_npz_headers(path)
    shapes = {name: headers[name].shape for name in ("x", "x_val", "x_test") if name in headers}
    samples = sum(shape[0] for shape in shapes.values() if shape)
    features = max((math.prod(shape[1:]) for shape in shapes.values() if shape), default=0)
    check_size(samples, features, limits)
    for header in headers.values():
        check_array_header(header, limits)
    total = sum(h.data_bytes for name, h in headers.items() if name in KNOWN_ARRAYS)
    if total > limits.max_tensor_bytes:
        raise InvalidDataset(
            f"The dataset's arrays declare {total:,} bytes together; at most "
            f"{limits.max_tensor_bytes:,} are accepted (limit max_tensor_bytes)."
        )
