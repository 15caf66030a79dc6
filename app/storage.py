"""Where bytes live: uploaded files, job artifacts and checkpoints.

`DISTILLERY_STORAGE_URL` picks the store: a directory (the embedded default, under the data
dir; a shared volume serves several machines) or `s3://bucket/prefix` on any S3-compatible
store (AWS S3, MinIO, Ceph, R2), configured the standard AWS way (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`). With an object store no
two machines share a disk: the API writes uploads to it, workers copy inputs from it into a
local cache (worker/local_copies.py), mirror their checkpoints to it and put artifacts in it,
and clients download artifacts from it through short-lived presigned URLs.

The database holds each object's path relative to its kind (`files`, `artifacts`), so a data
dir or a bucket prefix can move.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from app.config import Settings

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
Kind = Literal["files", "artifacts"]
# The transfer size of multipart uploads and ranged reads; S3 wants parts of 5 MiB or more.
PART_BYTES = 8 * 1024 * 1024


def sha256_of(path: Path, chunk: int = 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class RangeNotSatisfiable(Exception):
    """A `Range` header that asks for bytes the object does not have."""


@dataclass
class StoredStream:
    """An object (or the asked-for range of it) being read from the store."""

    chunks: Iterator[bytes]
    length: int
    total: int
    content_range: str | None  # set for a 206 answer

    def close(self) -> None:
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()


class Storage(ABC):
    """The store's operations; `open_storage(settings)` returns the configured one."""

    tmp_dir: Path
    # How artifact downloads are served when DISTILLERY_DOWNLOADS is not set.
    default_downloads: Literal["redirect", "stream"]

    # Uploaded files -------------------------------------------------------------------
    @abstractmethod
    def store_file(self, file_id: str, received: Path) -> str:
        """Put a received upload in the store; returns its stored path (relative)."""

    @abstractmethod
    def delete_file(self, relative: str) -> None: ...

    # Job artifacts --------------------------------------------------------------------
    @abstractmethod
    def put_artifact(
        self, job_id: str, name: str, source: Path, attempt: int | None = None
    ) -> tuple[str, int, str]:
        """Copy a finished artifact in; returns (relative path, bytes, sha256). A job
        attempt's artifacts go under their own prefix, so a stale attempt never replaces
        the files of the attempt that owns the job."""

    @abstractmethod
    def delete_job_artifacts(self, job_id: str, attempt: int | None = None) -> None:
        """Delete a job's artifacts (only those of `attempt` when given)."""

    # Reading --------------------------------------------------------------------------
    @abstractmethod
    def local_path(self, kind: Kind, relative: str) -> Path | None:
        """The object as a file on this machine, when the store is a directory."""

    @abstractmethod
    def exists(self, kind: Kind, relative: str) -> bool: ...

    @abstractmethod
    def download(self, kind: Kind, relative: str, target: Path) -> None:
        """Copy the object to `target` (written whole or not at all)."""

    @abstractmethod
    def read_bytes(self, kind: Kind, relative: str) -> bytes:
        """A small object's bytes (a report)."""

    @abstractmethod
    def open_stream(self, kind: Kind, relative: str, byte_range: str | None) -> StoredStream:
        """Read the object, or the one range a `Range: bytes=...` header asks for."""

    @abstractmethod
    def presigned_url(self, kind: Kind, relative: str, filename: str, seconds: int) -> str:
        """A URL that fetches the object without our API key, valid for `seconds`."""

    # Checkpoints: each attempt's working copies, snapshotted to the store ---------------
    @abstractmethod
    def checkpoint_dir(self, job_id: str, attempt: int) -> Path:
        """The directory an attempt's training loop writes its checkpoints to (its own:
        a stale attempt of the job, still running somewhere, never writes into it)."""

    @abstractmethod
    def push_checkpoint(self, job_id: str, attempt: int, path: Path) -> str:
        """Store a snapshot of a checkpoint file under a key used once (never overwritten);
        returns the key, which the worker then records under the attempt's fence."""

    @abstractmethod
    def pull_checkpoint(self, key: str, target: Path) -> None:
        """Copy a recorded checkpoint to `target` (to resume)."""

    @abstractmethod
    def delete_checkpoint(self, key: str) -> None: ...

    @abstractmethod
    def delete_checkpoints(self, job_id: str) -> None: ...


def check_artifact_name(name: str) -> None:
    if not _SAFE_NAME.match(name):
        raise ValueError(f"artifact name {name!r} is not a plain file name")


def artifact_relative(job_id: str, name: str, attempt: int | None) -> str:
    check_artifact_name(name)
    return f"{job_id}/{name}" if attempt is None else f"{job_id}/{attempt}/{name}"


def _artifact_prefix(job_id: str, attempt: int | None) -> str:
    return job_id if attempt is None else f"{job_id}/{attempt}"


def checkpoint_key(job_id: str, attempt: int, name: str) -> str:
    """A fresh key for a snapshot of checkpoint file `name` of one attempt."""
    check_artifact_name(name)
    return f"{job_id}/{attempt}/{uuid.uuid4().hex[:12]}-{name}"


class LocalStorage(Storage):
    """A directory: `files/`, `artifacts/` and `checkpoints/` under one root. An attempt's
    checkpoints are written in place (`checkpoints/job/attempt/work`); a push is a hard
    link under a fresh name beside them, nothing is copied."""

    default_downloads = "stream"

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.files_root = root / "files"
        self.artifacts_root = root / "artifacts"
        self.checkpoints_root = root / "checkpoints"
        self.tmp_dir = tmp_dir

    def store_file(self, file_id: str, received: Path) -> str:
        relative = f"{file_id[-2:]}/{file_id}"
        target = self.files_root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(received, target)
        except OSError:  # the spool dir is on another filesystem than the store
            partial = target.with_name(f".{target.name}.partial")
            shutil.copyfile(received, partial)
            os.replace(partial, target)
        return relative

    def file_path(self, relative: str) -> Path:
        return self._inside(self.files_root, relative)

    def delete_file(self, relative: str) -> None:
        self.file_path(relative).unlink(missing_ok=True)

    def put_artifact(
        self, job_id: str, name: str, source: Path, attempt: int | None = None
    ) -> tuple[str, int, str]:
        relative = artifact_relative(job_id, name, attempt)
        target = self._inside(self.artifacts_root, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{name}.partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        return relative, target.stat().st_size, sha256_of(target)

    def artifact_path(self, relative: str) -> Path:
        return self._inside(self.artifacts_root, relative)

    def delete_job_artifacts(self, job_id: str, attempt: int | None = None) -> None:
        prefix = _artifact_prefix(job_id, attempt)
        shutil.rmtree(self._inside(self.artifacts_root, prefix), ignore_errors=True)

    def local_path(self, kind: Kind, relative: str) -> Path:
        root = self.files_root if kind == "files" else self.artifacts_root
        return self._inside(root, relative)

    def exists(self, kind: Kind, relative: str) -> bool:
        return self.local_path(kind, relative).is_file()

    def download(self, kind: Kind, relative: str, target: Path) -> None:
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(self.local_path(kind, relative), partial)
        os.replace(partial, target)

    def read_bytes(self, kind: Kind, relative: str) -> bytes:
        return self.local_path(kind, relative).read_bytes()

    def open_stream(self, kind: Kind, relative: str, byte_range: str | None) -> StoredStream:
        raise NotImplementedError("a directory store is served by LargeFileResponse")

    def presigned_url(self, kind: Kind, relative: str, filename: str, seconds: int) -> str:
        raise NotImplementedError("a directory store cannot presign URLs")

    def checkpoint_dir(self, job_id: str, attempt: int) -> Path:
        return self._inside(self.checkpoints_root, f"{job_id}/{attempt}/work")

    def push_checkpoint(self, job_id: str, attempt: int, path: Path) -> str:
        key = checkpoint_key(job_id, attempt, path.name)
        target = self._inside(self.checkpoints_root, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:  # the loop replaces its file atomically, so a hard link is a snapshot
            os.link(path, target)
        except OSError:
            partial = target.with_name(f".{target.name}.partial")
            shutil.copyfile(path, partial)
            os.replace(partial, target)
        return key

    def pull_checkpoint(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(self._inside(self.checkpoints_root, key), partial)
        os.replace(partial, target)

    def delete_checkpoint(self, key: str) -> None:
        self._inside(self.checkpoints_root, key).unlink(missing_ok=True)

    def delete_checkpoints(self, job_id: str) -> None:
        shutil.rmtree(self._inside(self.checkpoints_root, job_id), ignore_errors=True)

    @staticmethod
    def _inside(root: Path, relative: str) -> Path:
        path = (root / relative).resolve()
        if not path.is_relative_to(root.resolve()):
            raise ValueError(f"path {relative!r} escapes its storage root")
        return path


class S3Storage(Storage):
    """A bucket (and key prefix) on an S3-compatible store, through boto3.

    Uploads of files go up as multipart uploads read from the spooled file a part at a
    time (boto3's transfer manager: parts in parallel, nothing whole in memory); reads are
    streamed. Presigned URLs are signed for `public_url` when set, since the address the
    API reaches the store at (`http://minio:9000`) is often not one clients can reach."""

    default_downloads = "redirect"

    def __init__(self, url: str, tmp_dir: Path, work_root: Path, public_url: str | None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        parts = urlsplit(url)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.tmp_dir = tmp_dir
        self.work_root = work_root
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=20,
        )
        session = boto3.session.Session()
        self.client = session.client("s3", config=config)
        self.signer = (
            session.client("s3", config=config, endpoint_url=public_url)
            if public_url
            else self.client
        )
        self.transfer = TransferConfig(
            multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=4
        )

    def key(self, kind: str, relative: str) -> str:
        if ".." in relative.split("/") or relative.startswith("/"):
            raise ValueError(f"path {relative!r} escapes its storage root")
        return "/".join(p for p in (self.prefix, kind, relative) if p)

    def _put(self, kind: str, relative: str, source: Path) -> None:
        key = self.key(kind, relative)
        self.client.upload_file(str(source), self.bucket, key, Config=self.transfer)

    def store_file(self, file_id: str, received: Path) -> str:
        relative = f"{file_id[-2:]}/{file_id}"
        self._put("files", relative, received)
        return relative

    def delete_file(self, relative: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key("files", relative))

    def put_artifact(
        self, job_id: str, name: str, source: Path, attempt: int | None = None
    ) -> tuple[str, int, str]:
        relative = artifact_relative(job_id, name, attempt)
        self._put("artifacts", relative, source)
        return relative, source.stat().st_size, sha256_of(source)

    def delete_job_artifacts(self, job_id: str, attempt: int | None = None) -> None:
        self._delete_under(self.key("artifacts", _artifact_prefix(job_id, attempt)) + "/")

    def _delete_under(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def local_path(self, kind: Kind, relative: str) -> None:
        return None

    def exists(self, kind: Kind, relative: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(kind, relative))
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        return True

    def download(self, kind: Kind, relative: str, target: Path) -> None:
        self._get(self.key(kind, relative), target)

    def _get(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        self.client.download_file(self.bucket, key, str(partial), Config=self.transfer)
        os.replace(partial, target)

    def read_bytes(self, kind: Kind, relative: str) -> bytes:
        answer = self.client.get_object(Bucket=self.bucket, Key=self.key(kind, relative))
        body: bytes = answer["Body"].read()
        return body

    def open_stream(self, kind: Kind, relative: str, byte_range: str | None) -> StoredStream:
        from botocore.exceptions import ClientError

        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(kind, relative)}
        if byte_range:
            request["Range"] = byte_range
        try:
            answer = self.client.get_object(**request)
        except ClientError as exc:
            if _status(exc) == 416:
                raise RangeNotSatisfiable(byte_range) from exc
            raise
        length = int(answer["ContentLength"])
        content_range = answer.get("ContentRange") if byte_range else None
        total = int(content_range.rsplit("/", 1)[1]) if content_range else length
        chunks = answer["Body"].iter_chunks(PART_BYTES // 2)
        return StoredStream(chunks, length, total, content_range)

    def presigned_url(self, kind: Kind, relative: str, filename: str, seconds: int) -> str:
        url: str = self.signer.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.key(kind, relative),
                "ResponseContentDisposition": f"attachment; filename*=UTF-8''{quote(filename)}",
            },
            ExpiresIn=seconds,
        )
        return url

    def checkpoint_dir(self, job_id: str, attempt: int) -> Path:
        return self.work_root / "checkpoints" / job_id / str(attempt)

    def push_checkpoint(self, job_id: str, attempt: int, path: Path) -> str:
        key = checkpoint_key(job_id, attempt, path.name)
        # Copied aside first: the loop may replace the file while it is being sent.
        snapshot = self.tmp_dir / f"{key.replace('/', '-')}.sending"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, snapshot)
        except OSError:
            shutil.copyfile(path, snapshot)
        try:
            self._put("checkpoints", key, snapshot)
        finally:
            snapshot.unlink(missing_ok=True)
        return key

    def pull_checkpoint(self, key: str, target: Path) -> None:
        self._get(self.key("checkpoints", key), target)

    def delete_checkpoint(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key("checkpoints", key))

    def delete_checkpoints(self, job_id: str) -> None:
        self._delete_under(self.key("checkpoints", job_id) + "/")


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def open_storage(settings: Settings) -> Storage:
    """The store `settings.storage_url` names (one client per process and URL)."""
    return _open(
        settings.storage_url or str(settings.resolved_data_dir),
        settings.resolved_data_dir,
        settings.storage_public_url,
    )


@lru_cache(maxsize=8)
def _open(url: str, data_dir: Path, public_url: str | None) -> Storage:
    tmp_dir = data_dir / "tmp"
    if url.startswith("s3://"):
        return S3Storage(url, tmp_dir, data_dir, public_url)
    root = Path(url.removeprefix("file://")).expanduser().resolve()
    return LocalStorage(root, tmp_dir)
