"""`distillery up` (what `make run` runs): SQLite database, SQLite broker, files on disk."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from tests.e2e.conftest import Api, check_distilled, digits_spec

pytestmark = pytest.mark.e2e


def test_make_run_path_distils_digits_end_to_end(
    embedded: Api, digits: dict[str, Path], tmp_path: Path
) -> None:
    teacher = embedded.upload(digits["teacher"], "teacher")
    dataset = embedded.upload(digits["dataset"], "dataset")
    assert teacher["format"] == "torchscript"
    job = embedded.submit(digits_spec(teacher["id"], dataset["id"]))
    finished = embedded.wait(job["id"])
    check_distilled(embedded, finished, digits["dataset"], tmp_path / "student.pt")


class _WritesAFileWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["pickle", "garbage"])
def test_bad_teacher_fails_at_validation(
    embedded: Api, digits: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "unpickled"
    bad = tmp_path / "teacher.pt"
    if kind == "pickle":
        bad.write_bytes(pickle.dumps(_WritesAFileWhenUnpickled(marker)))
    else:
        bad.write_bytes(os.urandom(4096))
    teacher = embedded.upload(bad, "teacher")
    dataset = embedded.upload(digits["dataset"], "dataset")
    job = embedded.wait(embedded.submit(digits_spec(teacher["id"], dataset["id"]))["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_teacher"
    assert "TorchScript" in job["error"]["message"]
    assert "Traceback" not in job["error"]["message"]
    kinds = [e["kind"] for e in embedded.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert kinds == ["queued", "validating", "failed"]
    assert not marker.exists(), "the uploaded pickle was loaded"


def test_cancel_stops_a_running_job(embedded: Api, digits: dict[str, Path]) -> None:
    teacher = embedded.upload(digits["teacher"], "teacher")
    dataset = embedded.upload(digits["dataset"], "dataset")
    job = embedded.submit(digits_spec(teacher["id"], dataset["id"], epochs=500))
    embedded.wait(job["id"], until={"running"})
    with embedded.client as client:
        asked = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert asked["status"] in {"cancelling", "cancelled"}
    ended = embedded.wait(job["id"], timeout=60)
    assert ended["status"] == "cancelled"
    assert ended["progress"] < 0.5
    assert embedded.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"] == []


def _validated(api: Api, file_id: str, timeout: float = 120) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        file = api.get(f"/v1/files/{file_id}").json()
        if file["status"] != "validating":
            return dict(file)
        time.sleep(0.3)
    raise AssertionError(f"file {file_id} is still validating")


def test_uploads_are_validated_by_a_worker(
    embedded: Api, digits: dict[str, Path], tmp_path: Path
) -> None:
    teacher = embedded.upload(digits["teacher"], "teacher")
    dataset = embedded.upload(digits["dataset"], "dataset")
    assert teacher["status"] == "validating"
    checked = _validated(embedded, teacher["id"])
    assert checked["status"] == "ready"
    assert checked["details"]["format"] == "torchscript"
    assert checked["details"]["parameters"] > 100_000
    data = _validated(embedded, dataset["id"])
    assert data["status"] == "ready"
    assert data["details"]["samples"] == 1797 and data["details"]["sample_shape"] == [1, 8, 8]
    assert data["details"]["classes"] == 10
    garbage = tmp_path / "teacher.pt"
    garbage.write_bytes(os.urandom(2048))
    bad = _validated(embedded, embedded.upload(garbage, "teacher")["id"])
    assert bad["status"] == "invalid"
    assert bad["details"]["error"]["code"] == "invalid_teacher"


def test_a_download_broken_off_leaves_the_server_well(embedded: Api, tmp_path: Path) -> None:
    """A client that hangs up mid-download (a chunk read ahead in flight) costs the server
    nothing: no error in its log, and the next download is whole."""
    import hashlib

    import numpy as np

    path = tmp_path / "big.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(80_000, 48)).astype(np.float32), y=np.zeros(80_000))
    file = embedded.upload(path, "dataset")
    url = f"/v1/files/{file['id']}/content"
    for _ in range(3):
        with embedded.client as client, client.stream("GET", url) as response:
            assert response.status_code == 200
            next(response.iter_raw(1024 * 1024))  # then hang up
    with embedded.client as client:
        whole = client.get(url)
    assert hashlib.sha256(whole.content).hexdigest() == file["sha256"]
    log = (embedded.root / "up.log").read_text() if embedded.root else ""
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]
