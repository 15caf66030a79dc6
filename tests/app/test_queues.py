"""Queues in the API: `resources` in the spec, `GET /v1/queues`, and a job's waiting note."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from app.config import get_settings
from app.db import session_scope
from app.services.queues import forget_worker, record_heartbeat
from tests.app.conftest import spec


def queues(client: TestClient, headers: dict[str, str]) -> dict[str, dict]:
    answer = client.get("/v1/queues", headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list"
    return {row["name"]: row for row in body["data"]}


def test_queues_need_a_key(client: TestClient) -> None:
    assert client.get("/v1/queues").status_code == 401


def test_resources_are_validated(
    client: TestClient, headers: dict[str, str], job_files: dict[str, str]
) -> None:
    bad_resources = (
        {"queue": "a100 gpu"}, {"gpus": -1}, {"queue": "x", "cpus": 2},
        {"processes": 0}, {"processes": 17}, {"processes": "two"},
    )  # fmt: skip
    for bad in bad_resources:
        answer = client.post("/v1/jobs", headers=headers, json=spec(job_files, resources=bad))
        assert answer.status_code == 422, answer.text
        assert "resources" in answer.json()["error"]["message"]


def test_a_job_on_a_queue_without_workers_says_so_until_one_beats(
    client: TestClient, headers: dict[str, str], job_files: dict[str, str]
) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    body = spec(job_files, resources={"queue": queue, "gpus": 1})
    job = client.post("/v1/jobs", headers=headers, json=body).json()
    assert job["spec"]["resources"] == {"queue": queue, "gpus": 1, "processes": 1}
    seen = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert seen["waiting"] == f"waiting for a worker on queue '{queue}'"
    assert queues(client, headers)[queue] == {
        "name": queue, "object": "queue", "queued": 1, "running": 0, "workers": 0
    }  # fmt: skip

    name = f"test-worker-{queue}"
    with session_scope() as session:
        record_heartbeat(session, name, [queue, get_settings().control_queue])
    try:
        seen = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
        assert seen["status"] == "queued" and seen["waiting"] is None
        overview = queues(client, headers)
        assert overview[queue]["workers"] == 1
        assert get_settings().control_queue not in overview
        assert overview[get_settings().queue]["name"] == "distillery"
    finally:
        with session_scope() as session:
            forget_worker(session, name)
    assert queues(client, headers)[queue]["workers"] == 0
