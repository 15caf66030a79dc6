"""A job on two processes (`resources.processes: 2`) through the embedded default's real
worker: torchrun with two gloo ranks on CPU. It succeeds and says so in its report; a rank
killed mid-training loses the attempt and the job resumes from its checkpoint; a cancel
leaves no process of the job behind."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Api, Processes, check_distilled, clean_env, digits_spec
from tests.e2e.test_faults import FAST_RECOVERY, Cluster

pytestmark = pytest.mark.e2e


def two_process_spec(api: Api, digits: dict[str, Path], epochs: int) -> dict[str, Any]:
    teacher = api.upload(digits["teacher"], "teacher")
    dataset = api.upload(digits["dataset"], "dataset")
    return {**digits_spec(teacher["id"], dataset["id"], epochs), "resources": {"processes": 2}}


def ranks_dir(api: Api, job_id: str, attempt: int) -> Path:
    """The attempt's ranks directory, in the attempt's own working directory."""
    assert api.root is not None
    return api.root / "data" / "work" / f"{job_id}-{attempt}" / "ranks"


def processes_of(job_id: str) -> list[int]:
    """Live processes whose command line names a ranks directory of the job, any attempt's
    (torchrun and every rank), from /proc."""
    ranks = re.compile(rf"{re.escape(job_id)}-\d+/ranks")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if ranks.search(command) and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for(condition: Any, api: Api, what: str, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what}\n{api.processes.logs()}")


def train_losses(api: Api, job_id: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = api.get(f"/v1/jobs/{job_id}/metrics?name=train_loss").json()[
        "data"
    ]
    return data


def event_kinds(api: Api, job_id: str) -> list[str]:
    return [e["kind"] for e in api.get(f"/v1/jobs/{job_id}/events").json()["data"]]


def test_a_two_process_job_succeeds_and_its_report_says_so(
    embedded: Api, digits: dict[str, Path], tmp_path: Path
) -> None:
    job = embedded.submit(two_process_spec(embedded, digits, epochs=6))
    done = embedded.wait(job["id"])
    check_distilled(embedded, done, digits["dataset"], tmp_path / "student.pt")
    report = embedded.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["processes"] == 2
    assert done["spec"]["resources"]["processes"] == 2
    assert processes_of(job["id"]) == []


def test_a_killed_rank_fails_the_attempt_and_the_job_resumes(
    embedded: Api, digits: dict[str, Path]
) -> None:
    job = embedded.submit(two_process_spec(embedded, digits, epochs=6))
    # Past the first epoch's end, so its checkpoint is there to resume from.
    wait_for(
        lambda: any(m["epoch"] >= 2 for m in train_losses(embedded, job["id"])),
        embedded, "no training loss of epoch 2",
    )  # fmt: skip
    rank_1 = int((ranks_dir(embedded, job["id"], 1) / "rank-1.pid").read_text())
    os.kill(rank_1, signal.SIGKILL)

    done = embedded.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2
    kinds = event_kinds(embedded, job["id"])
    assert "requeued" in kinds and "resumed" in kinds[kinds.index("requeued") :]
    events = embedded.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    requeued = next(e for e in events if e["kind"] == "requeued")
    assert "training process" in requeued["message"], requeued
    report = embedded.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["processes"] == 2 and report["student"]["accuracy"] > 0.85
    assert processes_of(job["id"]) == []


def test_a_cancel_stops_every_rank(embedded: Api, digits: dict[str, Path]) -> None:
    job = embedded.submit(two_process_spec(embedded, digits, epochs=200))
    wait_for(lambda: train_losses(embedded, job["id"]), embedded, "training never started")
    running = processes_of(job["id"])
    assert len(running) >= 3, running  # torchrun and two ranks

    with embedded.client as client:
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    done = embedded.wait(job["id"], timeout=120)
    assert done["status"] == "cancelled", done
    assert processes_of(job["id"]) == []


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    env = clean_env(DISTILLERY_DATA_DIR=str(tmp_path / "data"), **FAST_RECOVERY)
    processes = Processes(tmp_path)
    yield Cluster(tmp_path, env, processes)
    processes.stop()


@pytest.mark.faults
def test_sigterm_hands_a_two_process_job_back_and_it_resumes(
    cluster: Cluster, digits: dict[str, Path]
) -> None:
    api = cluster.start()
    job = api.submit(two_process_spec(api, digits, epochs=20))
    first = cluster.start_worker()
    wait_for(lambda: api.get(f"/v1/jobs/{job['id']}").json()["progress"] >= 0.1, api, "slow")
    assert len(processes_of(job["id"])) >= 3
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 0
    handed = api.get(f"/v1/jobs/{job['id']}").json()
    assert handed["status"] == "queued" and handed["attempt"] == 0
    assert processes_of(job["id"]) == []

    cluster.start_worker()
    done = api.wait(job["id"], timeout=600)
    assert done["status"] == "succeeded" and done["attempt"] == 1
    kinds = event_kinds(api, job["id"])
    assert "requeued" in kinds and "resumed" in kinds[kinds.index("requeued") :]
    assert api.get(f"/v1/jobs/{job['id']}/report").json()["processes"] == 2
