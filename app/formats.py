"""Cheap content checks at upload time: sniff the format by its bytes (never the file's
name), read NPZ headers, sample a CSV's first rows, list an image ZIP's classes.

Nothing here loads an array's data, decodes an image or unpickles anything; deep checks
(loading the teacher, running it on the data) happen in the worker's `validating` stage.
The dataset rules are the worker's own (`worker.kd.datasets`: sniff, table, layout), which
import neither torch nor Pillow.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from app.errors import ApiError
from worker.kd.datasets.archives import check_archive
from worker.kd.datasets.base import DatasetLimits, image_archive_limits
from worker.kd.datasets.layout import image_layout
from worker.kd.datasets.npz import check_array_header, read_npz_headers
from worker.kd.datasets.table import DEFAULT_LABEL_COLUMN, sample_csv
from worker.kd.errors import InvalidDataset, InvalidTeacher
from worker.kd.formats import (
    ACCEPTED,
    ZIP_MAGICS,
    TextFormat,
    sniff_file,
)
from worker.kd.hf.layout import read_layout
from worker.kd.hf.textdata import describe, read_text_dataset

MAX_NPZ_MEMBERS = 64
MAX_LISTED = 1000  # column and class names shown in a file's details
IMAGE_MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
IMAGES_PROBED = 64


class InvalidFile(ApiError):
    status_code = 400
    code = "invalid_file"


def sniff_format(path: Path, head: bytes) -> str:
    """Name what the bytes are, in the engine's one vocabulary (worker.kd.formats)."""
    return sniff_file(path, head)


def inspect_npz(path: Path) -> dict[str, Any]:
    """Shapes and dtypes of each array, from the .npy headers; refuses what training can't
    use (objects, non-numeric dtypes, declared sizes past the limits, truncated members)
    before any array data is read."""
    with zipfile.ZipFile(path) as archive:
        members = len(archive.infolist())
    if members > MAX_NPZ_MEMBERS:
        raise InvalidFile(f"The NPZ holds {members} arrays; at most {MAX_NPZ_MEMBERS}.")
    limits = DatasetLimits()
    headers = read_npz_headers(path)
    for header in headers.values():
        check_array_header(header, limits)
    arrays = {name: {"shape": list(h.shape), "dtype": str(h.dtype)} for name, h in headers.items()}
    _check_dataset_arrays(arrays)
    return {"arrays": arrays, "samples": arrays["x"]["shape"][0]}


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


def inspect_csv(path: Path) -> dict[str, Any]:
    """The columns and an estimate of the rows, from the header and the first rows."""
    sample = sample_csv(path)
    text = sample.text_columns
    if len(text) > 1:
        shown = "; ".join(f"{name!r} has {where}" for name, where in list(text.items())[:5])
        raise InvalidFile(
            f"The CSV has {len(text)} columns that are not numeric ({shown}); every column but "
            "the label column must hold numbers."
        )
    if sample.rows_estimate < 2:
        raise InvalidFile(f"The CSV has {sample.rows_estimate} data row; at least 2 are needed.")
    details: dict[str, Any] = {
        "format": "csv",
        "columns": sample.columns[:MAX_LISTED],
        "num_columns": len(sample.columns),
        "has_label_column": DEFAULT_LABEL_COLUMN in sample.columns,
        "text_columns": text,
        "rows": sample.rows_estimate,
        "rows_exact": sample.complete,
        "rows_checked": sample.rows_sampled,
    }
    name = next(iter(text), DEFAULT_LABEL_COLUMN)
    if name != DEFAULT_LABEL_COLUMN:
        details["warning"] = (
            f"Column {name!r} holds text ({text[name]}), so it can only be the label column: "
            f"give jobs dataset.label_column={name!r}."
        )
    return details


def inspect_image_zip(path: Path) -> dict[str, Any]:
    """Classes (the folders) and images per class, from the archive's entries."""
    limits = DatasetLimits()
    infos = check_archive(path, image_archive_limits(limits))
    layout = image_layout(info.filename for info in infos)
    if len(layout.members) > limits.max_images:
        raise InvalidFile(
            f"The ZIP holds {len(layout.members):,} images; at most {limits.max_images:,} are "
            "accepted."
        )
    _probe_images(path, layout.members)
    classes = layout.classes or []
    return {
        "format": "image_zip",
        "images": len(layout.members),
        "labeled": layout.classes is not None,
        "num_classes": len(classes),
        "classes": classes[:MAX_LISTED],
        "images_per_class": dict(list(layout.counts().items())[:MAX_LISTED]),
        "ignored_files": len(layout.ignored),
    }


def _probe_images(path: Path, members: list[str]) -> None:
    """Refuse files named as images that are not PNG or JPEG, from a spread of samples."""
    step = max(1, len(members) // IMAGES_PROBED)
    with zipfile.ZipFile(path) as archive:
        for name in members[::step]:
            try:
                with archive.open(name) as handle:
                    head = handle.read(8)
            except (RuntimeError, NotImplementedError, zipfile.BadZipFile, OSError) as exc:
                raise InvalidFile(f"The archive entry {name!r} cannot be read ({exc}).") from exc
            if not head.startswith(IMAGE_MAGICS):
                raise InvalidFile(f"{name!r} in the ZIP is not a PNG or JPEG image.")


def inspect_dataset(path: Path, fmt: str) -> dict[str, Any]:
    """Check a dataset upload by its sniffed format; the file object's `details`."""
    try:
        if fmt == "npz":
            return {"format": "npz", **inspect_npz(path)}
        if fmt == "csv":
            return inspect_csv(path)
        if fmt in ("image_zip", "zip"):  # a ZIP without images: the layout check says so
            return inspect_image_zip(path)
        if fmt in ("jsonl", "text"):  # text datasets for Hugging Face teachers
            kind: TextFormat = "jsonl" if fmt == "jsonl" else "text"
            return describe(read_text_dataset(path, kind), kind)
    except InvalidDataset as exc:
        raise InvalidFile(exc.message) from exc
    hint = " (a single array: save x and y together with np.savez)" if fmt == "npy" else ""
    with path.open("rb") as handle:
        if fmt == "unknown" and handle.read(4).startswith(ZIP_MAGICS):
            hint = " (it starts as a ZIP archive but cannot be read: is it truncated?)"
    raise InvalidFile(f"A dataset must be {ACCEPTED}; this upload looks like {fmt!r}{hint}.")


def inspect_upload(purpose: str, path: Path, fmt: str) -> dict[str, Any]:
    """What the file object reports; raises InvalidFile for uploads no job could use."""
    if purpose == "dataset":
        return inspect_dataset(path, fmt)
    if purpose in ("teacher", "student") and fmt == "hf_zip":  # student: arch hf_file
        try:
            return read_layout(path).details()
        except InvalidTeacher as exc:
            raise InvalidFile(exc.message) from exc
    if fmt == "pickle":
        return {
            "warning": "This looks like a Python pickle. Distillery never unpickles uploads, "
            "so jobs will refuse it: upload a TorchScript file (torch.jit.script(m).save(...))."
        }
    return {}
