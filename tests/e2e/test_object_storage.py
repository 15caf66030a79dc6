"""The embedded stack on an object store (moto's real S3 endpoint): a digits job runs to
success with every byte in the bucket, none under the data dir's files or artifacts, and
the client downloads the student through a presigned-URL redirect."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client import Client
from tests.e2e.conftest import (
    Api,
    Processes,
    _key_from_log,
    clean_env,
    digits_spec,
    free_port,
    student_accuracy,
    wait_ready,
)
from tests.s3 import S3Endpoint, s3_endpoint  # noqa: F401  (the `s3` fixture)


@pytest.fixture
def on_s3(s3: S3Endpoint, tmp_path: Path) -> Iterator[tuple[Api, str]]:
    bucket = s3.new_bucket()
    processes = Processes(tmp_path)
    port = free_port()
    env = clean_env(
        DISTILLERY_CLIENT_CONFIG=str(tmp_path / "client.json"),
        DISTILLERY_STORAGE_URL=f"s3://{bucket}/distillery",
    )
    up = [sys.executable, "-m", "app.cli", "up", "--data-dir", str(tmp_path / "data")]
    processes.start("up", [*up, "--port", str(port)], env)
    try:
        key = _key_from_log(tmp_path / "up.log", processes)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, processes)
        yield Api(base, key, processes, tmp_path), bucket
    finally:
        processes.stop()


def test_a_job_runs_with_every_byte_in_the_object_store(
    on_s3: tuple[Api, str], s3: S3Endpoint, digits: dict[str, Path], tmp_path: Path
) -> None:
    api, bucket = on_s3
    teacher = api.upload(digits["teacher"], "teacher")
    dataset = api.upload(digits["dataset"], "dataset")
    job = api.wait(api.submit(digits_spec(teacher["id"], dataset["id"], epochs=3))["id"])
    assert job["status"] == "succeeded", job

    keys = s3.keys(bucket)
    assert f"distillery/files/{teacher['id'][-2:]}/{teacher['id']}" in keys
    assert f"distillery/artifacts/{job['id']}/1/student.pt" in keys  # attempt 1's
    # The worker deletes the checkpoints just after it commits `succeeded` (never before:
    # a failed end must still resume), so a client can see the status a moment earlier.
    checkpoints = f"distillery/checkpoints/{job['id']}/"
    deadline = time.monotonic() + 30
    while any(k.startswith(checkpoints) for k in s3.keys(bucket)):
        assert time.monotonic() < deadline, "the succeeded job's checkpoints were not deleted"
        time.sleep(0.2)
    data = tmp_path / "data"
    for kind in ("files", "artifacts", "checkpoints"):
        assert not [p for p in (data / kind).rglob("*") if p.is_file()], kind

    redirect = api.get(f"/v1/jobs/{job['id']}/artifacts/student.pt")
    assert redirect.status_code == 307 and "X-Amz-Expires=" in redirect.headers["location"]
    with Client(api.base, api.key) as client:
        student = client.download(job["id"], "student.pt", tmp_path / "student.pt")
        report = client.report(job["id"])
    assert student_accuracy(student, digits["dataset"]) == report["student"]["accuracy"]
    assert report["student"]["accuracy"] > 0.5  # trained (chance is 0.1); 3 epochs only
