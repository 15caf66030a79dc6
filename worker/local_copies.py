"""A worker's local copies of what lives in the store: input files and checkpoints.

With an object store a worker shares no disk with the API or other workers:
- `InputCache` fetches a job's inputs into a local directory keyed by sha256 (two jobs on
  the same teacher fetch it once), bounded in bytes: the least recently used copies are
  deleted to make room; a running job keeps its own links to what it reads.
- `mirrored_checkpoints` pulls a job's recorded checkpoints before training (to resume) and
  pushes each new checkpoint the loop writes, recording it under the attempt's fence, so
  another worker can resume the job if this one is lost (on a directory store a push is a
  hard link).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.config import Settings
from app.storage import Kind, Storage, check_artifact_name, open_storage, sha256_of
from worker.fence import Fence

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
    storage: Storage,
    fence: Fence,
    local_dir: Path,
    current: dict[str, str] | None,
    record: Callable[[dict[str, str]], bool],
    every: float = 1.0,
) -> Iterator[None]:
    """Resume from the job's recorded checkpoints (`current`: file name to stored key), and
    push every checkpoint the attempt writes meanwhile (checked every `every` seconds, and
    once more when the body ends).

    Why this keeps a stale attempt from touching the owner's checkpoints: each push goes to
    a key of its own (`job/attempt/random-name`, never overwritten), and only `record`,
    which holds the attempt's fence in the database, makes it the job's checkpoint. A stale
    attempt's push is uploaded but its record is refused, so it is deleted and nothing ever
    reads it; a check of the fence before the upload alone would leave a window between
    the check and the write. The next attempt resumes from the recorded keys only, which a
    fenced attempt wrote. The keys a new record replaces are deleted after it commits."""
    local_dir.mkdir(parents=True, exist_ok=True)
    recorded = dict(current or {})
    for name, key in recorded.items():
        check_artifact_name(name)
        if not (local_dir / name).exists():
            try:
                storage.pull_checkpoint(key, local_dir / name)
            except Exception:  # gone (a record whose commit was in doubt): start without it
                log.warning("checkpoint %s of job %s is missing", key, fence.job_id, exc_info=True)
    stop = threading.Event()
    sent = _stamps(local_dir)  # what was just pulled is in the store already

    def push_changed() -> None:
        stamps = _stamps(local_dir)
        changed = {name: stamp for name, stamp in stamps.items() if sent.get(name) != stamp}
        if not changed:
            return
        if fence.lost.is_set():  # stale: its checkpoints are not sent any more
            fence.dropped["checkpoint(s)"] += len(changed)
            sent.update(changed)
            return
        pushed = {name: storage.push_checkpoint(fence.job_id, fence.attempt, local_dir / name)
                  for name in changed}  # fmt: skip
        owned = False
        try:
            owned = record({**recorded, **pushed})
        finally:
            if not owned:  # refused, or the database could not say: nothing reads them
                for key in pushed.values():
                    storage.delete_checkpoint(key)
        if not owned:
            fence.refuse(f"checkpoint ({', '.join(sorted(pushed))})")
            return
        replaced = [recorded[name] for name in pushed if name in recorded]
        recorded.update(pushed)
        sent.update(changed)
        for key in replaced:
            storage.delete_checkpoint(key)

    def loop() -> None:
        while not stop.wait(every):
            try:
                push_changed()
            except Exception:  # the store may be restarting; the next round retries
                log.warning("pushing the checkpoint of job %s failed", fence.job_id, exc_info=True)

    thread = threading.Thread(target=loop, name=f"checkpoints-{fence.job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        try:
            push_changed()  # the checkpoint a stop (shutdown, cancel, deadline) just wrote
        except Exception:
            log.warning("pushing the last checkpoint of job %s failed", fence.job_id, exc_info=True)


def _stamps(local_dir: Path) -> dict[str, int]:
    if not local_dir.is_dir():
        return {}
    return {
        p.name: p.stat().st_mtime_ns
        for p in local_dir.iterdir()
        if p.is_file() and not p.name.endswith(".partial")
    }
