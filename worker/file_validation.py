"""Asynchronous file validation: after an upload, a worker loads the file for real and
the file object then says what it is (`status: validating → ready | invalid`).

Teachers show their format, input shape, outputs, classes, parameter count and the named
layers with their output shapes (what feature losses can name); datasets show samples,
sample shape, labels and classes. A job may still name a file that is validating; its own
`validating` stage checks the files again against each other.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import update

from app.config import Settings
from app.db import session_scope
from app.models import File
from worker.kd.errors import KDError
from worker.local_copies import InputCache

log = logging.getLogger(__name__)


def inspect_file(purpose: str, path: Path, fmt: str) -> dict[str, Any]:
    """What validation found; raises KDError for a file no job could use."""
    if purpose in ("teacher", "student") and fmt == "hf_zip":
        return {}  # the upload check already read the model directory's config
    if purpose == "teacher":
        from worker.kd.teachers.inspection import inspect_teacher

        return inspect_teacher(path, "auto")
    if purpose == "dataset" and fmt in ("jsonl", "text"):
        from worker.kd.hf.textdata import describe, read_text_dataset

        return dict(describe(read_text_dataset(path, fmt), fmt))  # type: ignore[arg-type]
    if purpose == "dataset":
        return _inspect_dataset(path)
    if purpose == "student":
        from worker.kd.students import load_file_student

        student = load_file_student(path)
        return {"parameters": sum(p.numel() for p in student.parameters())}
    return {}


def _inspect_dataset(path: Path) -> dict[str, Any]:
    from worker.kd.datasets.splits import load_dataset
    from worker.kd.spec import DatasetSpec

    data = load_dataset(DatasetSpec(file_id="upload"), path, 0.2, 0)
    labels = data.labels()
    classes = int(max(int(y.max()) for y in labels) + 1) if labels else None
    return {
        "samples": data.samples,
        "sample_shape": list(data.input_shape),
        "labeled": bool(labels),
        "classes": classes,
        "class_names": data.class_names,
        "validation": data.source,
    }


def validate_file(file_id: str, settings: Settings) -> str | None:
    """Validate one file; returns its new status (None if it was not awaiting validation)."""
    with session_scope() as session:
        file = session.get(File, file_id)
        if file is None or file.status != "validating":
            return None
        purpose, fmt, details = file.purpose, file.format, dict(file.details)
        stored, sha256 = file.path, file.sha256
    inputs = InputCache.of(settings)
    local = settings.work_dir / f"{file_id}-validating"
    try:
        path = inputs.materialize("files", stored, sha256, local / "file")
        found = inspect_file(purpose, path, fmt)
        status, details = "ready", {**details, **found}
    except KDError as exc:
        status = "invalid"
        details = {**details, "error": {"code": exc.code, "message": exc.message}}
    except Exception as exc:  # a loader bug must not leave the file validating forever
        log.exception("validating file %s failed unexpectedly", file_id)
        status = "invalid"
        details = {**details, "error": {
            "code": "validation_error",
            "message": f"The file could not be checked ({type(exc).__name__}: {str(exc)[:200]}).",
        }}  # fmt: skip
    finally:
        shutil.rmtree(local, ignore_errors=True)
    with session_scope() as session:
        session.execute(
            update(File)
            .where(File.id == file_id, File.status == "validating")
            .values(status=status, details=details)
        )
    return status
