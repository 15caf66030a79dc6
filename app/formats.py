"""Cheap content checks at upload time: sniff the format by magic bytes, read NPZ headers.

Nothing here loads an array's data or unpickles anything; deep checks (loading the teacher,
running it on the data) happen in the worker's `validating` stage.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ApiError

MAX_NPZ_MEMBERS = 64
ZIP_MAGIC = b"PK\x03\x04"


class InvalidFile(ApiError):
    status_code = 400
    code = "invalid_file"


def sniff_format(path: Path, head: bytes) -> str:
    """Name what the bytes are: `npz`, `torchscript`, `zip`, `pickle` or `unknown`."""
    if head.startswith(ZIP_MAGIC):
        return _sniff_zip(path)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return "unknown"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    if any(name.endswith("/data.pkl") for name in names) and any("/code/" in n for n in names):
        return "torchscript"
    return "zip"


def inspect_npz(path: Path) -> dict[str, Any]:
    """Shapes and dtypes of each array, from the .npy headers; refuses what training can't use."""
    arrays: dict[str, dict[str, Any]] = {}
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if len(members) > MAX_NPZ_MEMBERS:
            raise InvalidFile(f"The NPZ holds {len(members)} arrays; at most {MAX_NPZ_MEMBERS}.")
        for member in members:
            with archive.open(member) as handle:
                arrays[member.filename.removesuffix(".npy")] = _npy_header(handle, member.filename)
    _check_dataset_arrays(arrays)
    return {"arrays": arrays, "samples": arrays["x"]["shape"][0]}


def _npy_header(handle: Any, name: str) -> dict[str, Any]:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    except ValueError as exc:
        raise InvalidFile(f"Array {name!r} in the NPZ has an unreadable header: {exc}") from exc
    if dtype.hasobject:
        raise InvalidFile(
            f"Array {name!r} holds Python objects; Distillery never unpickles uploads. "
            "Save numeric arrays (float or int) with np.savez."
        )
    return {"shape": list(shape), "dtype": str(dtype)}


def _check_dataset_arrays(arrays: dict[str, dict[str, Any]]) -> None:
    found = ", ".join(sorted(arrays)) or "nothing"
    if "x" not in arrays:
        raise InvalidFile(
            f"The dataset has no array named 'x' (found: {found}). "
            "Save features as x and labels as y: np.savez('data.npz', x=features, y=labels)."
        )
    for features, labels in (("x", "y"), ("x_val", "y_val")):
        if labels in arrays and features not in arrays:
            raise InvalidFile(f"The dataset has {labels!r} but no {features!r}.")
        if features not in arrays:
            continue
        shape = arrays[features]["shape"]
        if len(shape) < 2 or shape[0] < 1:
            raise InvalidFile(
                f"Array {features!r} has shape {tuple(shape)}; it needs a batch dimension first "
                "and at least one feature: (samples, features...)."
            )
        if labels in arrays:
            label_shape = arrays[labels]["shape"]
            if len(label_shape) != 1 or label_shape[0] != shape[0]:
                raise InvalidFile(
                    f"{labels!r} has shape {tuple(label_shape)} but {features!r} has "
                    f"{shape[0]} samples; give one integer label per sample."
                )
    if "x_val" in arrays and arrays["x_val"]["shape"][1:] != arrays["x"]["shape"][1:]:
        raise InvalidFile(
            f"'x_val' samples have shape {tuple(arrays['x_val']['shape'][1:])} but 'x' samples "
            f"have {tuple(arrays['x']['shape'][1:])}; they must match."
        )


def inspect_upload(purpose: str, path: Path, fmt: str) -> dict[str, Any]:
    """What the file object reports; raises InvalidFile for uploads no job could use."""
    if purpose == "dataset":
        if fmt != "npz":
            raise InvalidFile(
                f"A dataset must be an NPZ file (np.savez); this upload looks like {fmt!r}."
            )
        return inspect_npz(path)
    if fmt == "pickle":
        return {
            "warning": "This looks like a Python pickle. Distillery never unpickles uploads, "
            "so jobs will refuse it: upload a TorchScript file (torch.jit.script(m).save(...))."
        }
    return {}
