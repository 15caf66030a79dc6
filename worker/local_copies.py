"""A worker's local copies of what lives in the store: input files and checkpoints.

With an object store a worker shares no disk with the API or other workers:
- `InputCache` fetches a job's inputs into a local directory keyed by sha256 (two jobs on
  the same teacher fetch it once), bounded in bytes: the least recently used copies are
  deleted to make room; a running job keeps its own links to what it reads.
- `mirrored_checkpoints` pulls a job's stored checkpoints before training (to resume) and
  pushes each new checkpoint the loop writes, so another worker can resume the job if this
  one is lost. With a directory store both are no-ops: the files are already in place.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.config import Settings
from app.storage import Kind, Storage, open_storage, sha256_of

log = logging.getLogger(__name__)


class InputCache:
    """Local copies of stored files, named by their sha256, at most `max_bytes` in all.

    A job gets its own hard link to each copy, so the cache may drop a copy at any time
    (another worker process on this machine trims it too) without pulling a file from
    under a running job; the job's links go when its work directory does."""

    def __init__(self, storage: Storage, root: Path, max_bytes: int) -> None:
        self.storage = storage
        self.root = root
        self.max_bytes = max_bytes

    @classmethod
    def of(cls, settings: Settings) -> InputCache:
        """This worker's cache of the configured store."""
        return cls(open_storage(settings), settings.input_cache_dir, settings.input_cache_bytes)

    def materialize(self, kind: Kind, relative: str, sha256: str, target: Path) -> Path:
        """The object as a local file: in place on a directory store, else `target`,
        linked to the cached copy (fetched first if this machine has none)."""
        local = self.storage.local_path(kind, relative)
        if local is not None:
            return local
        cached = self.root / sha256
        if cached.is_file():
            os.utime(cached)  # recently used
        else:
            self._fetch(kind, relative, sha256, cached)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(cached, target)
        except OSError:  # another filesystem
            shutil.copyfile(cached, target)
        self.trim()
        return target

    def _fetch(self, kind: Kind, relative: str, sha256: str, cached: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{sha256}.{uuid.uuid4().hex}"  # workers may fetch at once
        try:
            self.storage.download(kind, relative, partial)
            if sha256_of(partial) != sha256:
                raise OSError(f"the stored copy of {relative!r} does not match its sha256")
            os.replace(partial, cached)
        finally:
            partial.unlink(missing_ok=True)

    def trim(self) -> None:
        """Delete the least recently used copies until the rest fit in `max_bytes`."""
        if not self.root.is_dir():
            return
        copies = []
        for path in self.root.iterdir():
            if path.name.startswith("."):
                continue  # a fetch in progress
            try:
                stat = path.stat()
            except FileNotFoundError:  # trimmed by another process just now
                continue
            copies.append((stat.st_mtime, stat.st_size, path))
        copies.sort()
        used = sum(size for _, size, _ in copies)
        for _, size, path in copies:
            if used <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            used -= size


@contextmanager
def mirrored_checkpoints(
    storage: Storage, job_id: str, local_dir: Path, every: float = 1.0
) -> Iterator[None]:
    """Resume from the stored checkpoints, and push every checkpoint written meanwhile
    (checked every `every` seconds, and once more when the body ends)."""
    storage.pull_checkpoints(job_id, local_dir)
    stop = threading.Event()
    sent: dict[str, int] = {}

    def push_changed() -> None:
        stamps = _stamps(local_dir)
        if stamps and stamps != {k: v for k, v in sent.items() if k in stamps}:
            storage.push_checkpoints(job_id, local_dir)
            sent.update(stamps)

    def loop() -> None:
        while not stop.wait(every):
            try:
                push_changed()
            except Exception:  # the store may be restarting; the next round retries
                log.warning("pushing the checkpoint of job %s failed", job_id, exc_info=True)

    sent.update(_stamps(local_dir))  # what was just pulled is in the store already
    thread = threading.Thread(target=loop, name=f"checkpoints-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        try:
            push_changed()  # the checkpoint a stop (shutdown, cancel, deadline) just wrote
        except Exception:
            log.warning("pushing the last checkpoint of job %s failed", job_id, exc_info=True)


def _stamps(local_dir: Path) -> dict[str, int]:
    if not local_dir.is_dir():
        return {}
    return {
        p.name: p.stat().st_mtime_ns
        for p in local_dir.iterdir()
        if p.is_file() and not p.name.endswith(".partial")
    }
