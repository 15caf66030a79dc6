"""The stores behind `Storage`: a directory and an S3 bucket (moto's real S3 endpoint)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.storage import LocalStorage, RangeNotSatisfiable, S3Storage, Storage, open_storage
from tests.s3 import S3Endpoint, s3_endpoint  # noqa: F401  (the `s3` fixture)
from worker.fence import Fence
from worker.local_copies import InputCache, mirrored_checkpoints


def s3_storage(endpoint: S3Endpoint, tmp_path: Path, **settings: object) -> S3Storage:
    bucket = endpoint.new_bucket()
    store = open_storage(
        Settings(data_dir=tmp_path, storage_url=f"s3://{bucket}/prefix", **settings)
    )
    assert isinstance(store, S3Storage)
    return store


def test_a_directory_is_the_default_store(tmp_path: Path) -> None:
    store = open_storage(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalStorage)
    assert store.files_root == tmp_path.resolve() / "files"
    assert store.checkpoint_dir("job_x", 2) == tmp_path.resolve() / "checkpoints/job_x/2/work"


def test_files_and_artifacts_round_trip_through_a_bucket(s3: S3Endpoint, tmp_path: Path) -> None:
    store = s3_storage(s3, tmp_path)
    received = tmp_path / "upload"
    received.write_bytes(os.urandom(20 * 1024 * 1024))  # three parts of a multipart upload
    relative = store.store_file("file_abc", received)
    head = s3.client().head_object(Bucket=store.bucket, Key=store.key("files", relative))
    assert head["ETag"].strip('"').endswith("-3")  # sent as a multipart upload
    assert store.exists("files", relative) and store.local_path("files", relative) is None
    copy = tmp_path / "copy"
    store.download("files", relative, copy)
    assert copy.read_bytes() == received.read_bytes()

    name, size, digest = store.put_artifact("job_1", "report.json", _write(tmp_path, b"{}"))
    assert (name, size, digest) == ("job_1/report.json", 2, hashlib.sha256(b"{}").hexdigest())
    assert store.read_bytes("artifacts", name) == b"{}"
    store.delete_job_artifacts("job_1")
    store.delete_file(relative)
    assert s3.keys(store.bucket) == []


def test_ranged_reads_and_presigned_urls(s3: S3Endpoint, tmp_path: Path) -> None:
    store = s3_storage(s3, tmp_path)
    data = bytes(range(256)) * 100
    relative, _, _ = store.put_artifact("job_2", "student.pt", _write(tmp_path, data))
    stream = store.open_stream("artifacts", relative, "bytes=10-19")
    assert b"".join(stream.chunks) == data[10:20]
    assert (stream.length, stream.total, stream.content_range) == (
        10,
        len(data),
        "bytes 10-19/25600",
    )
    with pytest.raises(RangeNotSatisfiable):
        store.open_stream("artifacts", relative, f"bytes={len(data) + 5}-")

    url = store.presigned_url("artifacts", relative, "student.pt", 120)
    assert "X-Amz-Expires=120" in url and url.startswith(s3.endpoint)
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == data
    assert "student.pt" in answer.headers["content-disposition"]


def test_presigned_urls_name_the_public_address(s3: S3Endpoint, tmp_path: Path) -> None:
    store = s3_storage(s3, tmp_path, storage_public_url="https://files.example.com")
    relative, _, _ = store.put_artifact("job_3", "a.bin", _write(tmp_path, b"x"))
    url = store.presigned_url("artifacts", relative, "a.bin", 60)
    assert url.startswith(f"https://files.example.com/{store.bucket}/prefix/artifacts/job_3/a.bin?")


def test_keys_cannot_escape_the_prefix(s3: S3Endpoint, tmp_path: Path) -> None:
    store = s3_storage(s3, tmp_path)
    with pytest.raises(ValueError, match="escapes"):
        store.key("files", "../other")
    with pytest.raises(ValueError, match="plain file name"):
        store.put_artifact("job", "../x", _write(tmp_path, b"x"))


def test_checkpoints_are_mirrored_and_resumed(s3: S3Endpoint, tmp_path: Path) -> None:
    store = s3_storage(s3, tmp_path)
    records: list[dict[str, str]] = []

    def record(keys: dict[str, str]) -> bool:
        records.append(keys)
        return True

    first = Fence("job_4", 1)
    local = store.checkpoint_dir("job_4", 1)
    with mirrored_checkpoints(store, first, local, None, record, every=0.05):
        (local / "checkpoint.pt").write_bytes(b"epoch 1")
        (local / "checkpoint.pt.partial").write_bytes(b"half written")
    (key,) = records[-1].values()
    assert key.startswith("job_4/1/") and key.endswith("-checkpoint.pt")
    assert s3.keys(store.bucket, "prefix/checkpoints/") == [f"prefix/checkpoints/{key}"]

    second = Fence("job_4", 2)
    elsewhere = store.checkpoint_dir("job_4", 2)
    with mirrored_checkpoints(store, second, elsewhere, records[-1], record, every=0.05):
        assert (elsewhere / "checkpoint.pt").read_bytes() == b"epoch 1"
        (elsewhere / "checkpoint.pt").write_bytes(b"epoch 2")
    (newer,) = records[-1].values()
    assert newer.startswith("job_4/2/")
    # The replaced checkpoint is deleted once the new one is recorded.
    assert s3.keys(store.bucket, "prefix/checkpoints/") == [f"prefix/checkpoints/{newer}"]
    body = store.client.get_object(Bucket=store.bucket, Key=f"prefix/checkpoints/{newer}")
    assert body["Body"].read() == b"epoch 2"
    store.delete_checkpoints("job_4")
    assert s3.keys(store.bucket, "prefix/checkpoints/") == []


def test_the_input_cache_fetches_once_and_stays_within_its_bound(
    s3: S3Endpoint, tmp_path: Path
) -> None:
    store = s3_storage(s3, tmp_path)
    blobs = [os.urandom(1000) for _ in range(3)]
    stored = [
        (store.store_file(f"file_{i}", _write(tmp_path, b)), _sha(b)) for i, b in enumerate(blobs)
    ]
    cache = InputCache(store, tmp_path / "cache", max_bytes=2500)
    first = cache.materialize("files", *stored[0], tmp_path / "job" / "teacher")
    assert first.read_bytes() == blobs[0]
    store.delete_file(stored[0][0])  # a second job on the same bytes needs no fetch
    again = cache.materialize("files", *stored[0], tmp_path / "job2" / "teacher")
    assert again.read_bytes() == blobs[0]
    for relative, sha in stored[1:]:
        cache.materialize("files", relative, sha, tmp_path / "job3" / sha)
    kept = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert kept == sorted(sha for _, sha in stored[1:])  # the least recently used went
    assert first.read_bytes() == blobs[0]  # the job's own link still reads


def test_a_corrupted_stored_copy_is_refused(s3: S3Endpoint, tmp_path: Path) -> None:
    store = s3_storage(s3, tmp_path)
    relative = store.store_file("file_z", _write(tmp_path, b"real bytes"))
    cache = InputCache(store, tmp_path / "cache", max_bytes=10_000)
    with pytest.raises(OSError, match="sha256"):
        cache.materialize("files", relative, _sha(b"other bytes"), tmp_path / "job" / "x")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_directory_store_reads_inputs_in_place(tmp_path: Path) -> None:
    store: Storage = open_storage(Settings(data_dir=tmp_path))
    relative = store.store_file("file_q", _write(tmp_path, b"abc"))
    cache = InputCache(store, tmp_path / "cache", max_bytes=0)
    path = cache.materialize("files", relative, _sha(b"abc"), tmp_path / "job" / "teacher")
    assert path == store.local_path("files", relative) and path.read_bytes() == b"abc"


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"src-{_sha(data)[:12]}-{os.urandom(4).hex()}"
    path.write_bytes(data)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
