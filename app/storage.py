"""Where bytes live: uploaded files and job artifacts, on a local (or shared) filesystem.

The database holds each object's path relative to its root, so a data dir can move. A
shared volume serves many workers; an object store would slot in behind the same methods.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from app.config import Settings

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def sha256_of(path: Path, chunk: int = 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Storage:
    def __init__(self, settings: Settings) -> None:
        self.files_root = settings.files_dir
        self.artifacts_root = settings.artifacts_dir
        self.tmp_dir = settings.resolved_data_dir / "tmp"

    # Uploaded files -------------------------------------------------------------------
    def store_file(self, file_id: str, received: Path) -> str:
        """Move a received upload into place; returns the stored path (relative)."""
        relative = f"{file_id[-2:]}/{file_id}"
        target = self.files_root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(received, target)
        return relative

    def file_path(self, relative: str) -> Path:
        return self._inside(self.files_root, relative)

    def delete_file(self, relative: str) -> None:
        self.file_path(relative).unlink(missing_ok=True)

    # Job artifacts --------------------------------------------------------------------
    def put_artifact(self, job_id: str, name: str, source: Path) -> tuple[str, int, str]:
        """Copy a finished artifact in; returns (relative path, bytes, sha256)."""
        check_artifact_name(name)
        relative = f"{job_id}/{name}"
        target = self._inside(self.artifacts_root, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{name}.partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        return relative, target.stat().st_size, sha256_of(target)

    def artifact_path(self, relative: str) -> Path:
        return self._inside(self.artifacts_root, relative)

    def delete_job_artifacts(self, job_id: str) -> None:
        shutil.rmtree(self._inside(self.artifacts_root, job_id), ignore_errors=True)

    @staticmethod
    def _inside(root: Path, relative: str) -> Path:
        path = (root / relative).resolve()
        if not path.is_relative_to(root.resolve()):
            raise ValueError(f"path {relative!r} escapes its storage root")
        return path


def check_artifact_name(name: str) -> None:
    if not _SAFE_NAME.match(name):
        raise ValueError(f"artifact name {name!r} is not a plain file name")
