"""Routing by queue with real workers: a job for `a100` waits, saying why, while only a
default worker runs; a worker started with `--queues a100` then takes it."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Api, Processes, clean_env, digits_spec


def queues(api: Api) -> dict[str, dict[str, Any]]:
    answer = api.get("/v1/queues")
    assert answer.status_code == 200, answer.text
    return {row["name"]: row for row in answer.json()["data"]}


def test_a_job_waits_for_a_worker_on_its_queue(
    embedded: Api, processes: Processes, digits: dict[str, Path]
) -> None:
    api = embedded
    teacher = api.upload(digits["teacher"], "teacher")
    dataset = api.upload(digits["dataset"], "dataset")
    spec = {**digits_spec(teacher["id"], dataset["id"], epochs=1), "resources": {"queue": "a100"}}
    job = api.submit(spec)

    overview = queues(api)
    deadline = time.monotonic() + 120
    while not overview["distillery"]["workers"] and time.monotonic() < deadline:
        time.sleep(0.5)  # the default worker's first heartbeat
        overview = queues(api)
    assert overview["distillery"]["workers"] == 1
    assert overview["a100"]["queued"] == 1 and overview["a100"]["workers"] == 0
    seen = api.get(f"/v1/jobs/{job['id']}").json()
    assert seen["status"] == "queued"
    assert seen["waiting"] == "waiting for a worker on queue 'a100'"

    assert api.root is not None
    env = clean_env(DISTILLERY_DATA_DIR=str(api.root / "data"))
    worker = [sys.executable, "-m", "app.cli", "worker", "--queues", "a100", "--quiet"]
    a100 = processes.start("a100-worker", worker, env)
    done = api.wait(job["id"], timeout=600)
    assert done["status"] == "succeeded", done
    assert done["waiting"] is None
    events = api.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    runners = {e["data"]["worker"] for e in events if e["kind"] == "validating"}
    assert runners == {f"{socket.gethostname()}:{a100.pid}"}  # the a100 worker ran it
    assert queues(api)["a100"]["workers"] == 1
