"""Webhooks reach a receiver on 127.0.0.1, signed, retried after a failure, logged."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.webhooks import verify
from tests.e2e.conftest import (
    Api,
    Processes,
    clean_env,
    digits_spec,
    fresh_database,
)
from tests.e2e.test_faults import FAST_RECOVERY, Cluster, PrivateRedis

pytestmark = pytest.mark.e2e


class Receiver(HTTPServer):
    def __init__(self, fail_first: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fail_first = fail_first
        self.calls: list[tuple[dict[str, str], bytes, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/distillery"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 503 if len(self.server.calls) < self.server.fail_first else 204
        self.server.calls.append((dict(self.headers.items()), body, status))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def events_of(api: Api, job_id: str) -> list[dict[str, Any]]:
    return list(api.get(f"/v1/jobs/{job_id}/events").json()["data"])


def wait_for(condition: Any, timeout: float, what: str, processes: Processes) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}\n{processes.logs()}")
        time.sleep(0.2)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(fail_first=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_job_end_is_posted_signed_and_retried(
    embedded: Api, digits: dict[str, Path], receiver: Receiver
) -> None:
    teacher = embedded.upload(digits["teacher"], "teacher")
    dataset = embedded.upload(digits["dataset"], "dataset")
    spec = digits_spec(teacher["id"], dataset["id"], epochs=1) | {"webhook_url": receiver.url}
    job = embedded.wait(embedded.submit(spec)["id"])
    assert job["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while len(receiver.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [status for _, _, status in receiver.calls] == [503, 204]
    secret = embedded.get("/v1/webhook_secret").json()["secret"]
    (first_headers, _, _), (headers, body, _) = receiver.calls
    assert verify(secret, headers["Distillery-Signature"], body)
    assert headers["Distillery-Event"] == "job.succeeded"
    assert headers["Distillery-Delivery"] == first_headers["Distillery-Delivery"]
    assert json.loads(body)["id"] == job["id"] and json.loads(body)["status"] == "succeeded"
    while time.monotonic() < deadline:
        events = embedded.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        if any(e["kind"] == "webhook_delivered" for e in events):
            break
        time.sleep(0.2)
    hooks = [e for e in events if e["kind"] == "webhook_attempt"]
    assert [h["data"]["ok"] for h in hooks] == [False, True]
    assert [h["data"]["status_code"] for h in hooks] == [503, 204]
    assert "retrying" in hooks[0]["message"]
    (delivered,) = [e for e in events if e["kind"] == "webhook_delivered"]
    assert "delivered" in delivered["message"] and delivered["data"]["attempts"] == 2


def test_cancelling_a_queued_job_is_announced_too(
    embedded: Api, receiver: Receiver, digits: dict[str, Path]
) -> None:
    receiver.fail_first = 0
    teacher = embedded.upload(digits["teacher"], "teacher")
    dataset = embedded.upload(digits["dataset"], "dataset")
    blocker = embedded.submit(digits_spec(teacher["id"], dataset["id"], epochs=200))
    spec = digits_spec(teacher["id"], dataset["id"]) | {"webhook_url": receiver.url}
    queued = embedded.submit(spec)
    with embedded.client as client:
        assert client.post(f"/v1/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
        client.post(f"/v1/jobs/{blocker['id']}/cancel")
    deadline = time.monotonic() + 60
    while not receiver.calls and time.monotonic() < deadline:
        time.sleep(0.2)
    headers, body, _ = receiver.calls[0]
    assert headers["Distillery-Event"] == "job.cancelled"
    assert json.loads(body)["id"] == queued["id"]


def small_inputs(root: Path) -> tuple[Path, Path]:
    """A TorchScript teacher and a dataset made here (no download; quick to make)."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(0)
    teacher = root / "teacher.pt"
    torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(16, 3))).save(str(teacher))
    rng = np.random.default_rng(0)
    dataset = root / "data.npz"
    np.savez(
        dataset,
        x=rng.normal(size=(4000, 16)).astype(np.float32),
        y=rng.integers(0, 3, size=4000),
    )
    return teacher, dataset


def long_spec(teacher: str, dataset: str) -> dict[str, Any]:
    """A job that trains for minutes (100,000 steps) unless it is cancelled."""
    return {
        "teacher": {"file_id": teacher},
        "student": {"arch": "mlp", "hidden": [16]},
        "dataset": {"file_id": dataset},
        "training": {"epochs": 1000, "batch_size": 32, "max_runtime_seconds": 900},
    }


@pytest.mark.faults
def test_webhooks_of_jobs_ended_while_the_broker_is_down_are_delivered_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    """PostgreSQL and a Redis of the test's own. With Redis stopped, a running job is
    cancelled and ends on its worker, and a queued one is cancelled through the API:
    neither webhook can be sent as a task. The worker's sweep sends the first (the broker
    is not needed to deliver); the second, with no worker alive, waits in its table until
    Redis is back and a worker starts, then the sweep sends it. The receiver gets each
    exactly once; the events show the attempts."""
    receiver.fail_first = 0
    redis = PrivateRedis(tmp_path)
    redis.start()
    processes = Processes(tmp_path)
    try:
        with fresh_database("distillery_hooks") as database_url:
            env = clean_env(
                DISTILLERY_DATA_DIR=str(tmp_path / "data"),
                DISTILLERY_DATABASE_URL=database_url,
                DISTILLERY_BROKER_URL=redis.url,
                DISTILLERY_WEBHOOK_ALLOW_HOSTS='["127.0.0.1"]',
                **FAST_RECOVERY,
            )
            cluster = Cluster(tmp_path, env, processes)
            api = cluster.start()
            teacher_path, dataset_path = small_inputs(tmp_path)
            teacher = api.upload(teacher_path, "teacher")["id"]
            dataset = api.upload(dataset_path, "dataset")["id"]
            hook = {"webhook_url": receiver.url}
            first = cluster.start_worker()
            ending = api.submit(long_spec(teacher, dataset) | hook)["id"]
            api.wait(ending, until={"running"}, timeout=240)
            redis.stop()
            outage = time.monotonic()
            assert api.get(f"/v1/jobs/{ending}").json()["status"] == "running", (
                "the job ended before the broker stopped; the test needs a longer job"
            )
            with api.client as client:  # the worker ends it at its next step: broker not needed
                assert client.post(f"/v1/jobs/{ending}/cancel").json()["status"] == "cancelling"
            assert api.wait(ending, timeout=300)["status"] == "cancelled"
            wait_for(
                lambda: any(e["kind"] == "webhook_delivered" for e in events_of(api, ending)),
                60,
                "the ended job's webhook was never delivered",
                processes,
            )
            first_after = time.monotonic() - outage
            # Still down: a job submitted and cancelled with no worker alive at all.
            first.kill()
            first.wait(timeout=30)
            cancelled = api.submit(long_spec(teacher, dataset) | hook)["id"]
            with api.client as client:
                answer = client.post(f"/v1/jobs/{cancelled}/cancel")
            assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
            time.sleep(3)
            assert len(receiver.calls) == 1, "nothing can send while no worker runs"
            redis.start()
            back = time.monotonic()
            cluster.start_worker()
            wait_for(
                lambda: len(receiver.calls) == 2, 120, "the cancel's webhook never came", processes
            )
            second_after = time.monotonic() - back
            time.sleep(4)  # several more sweeps (every second): nothing is sent again
            bodies = [json.loads(body) for _, body, _ in receiver.calls]
            assert [(b["id"], b["status"]) for b in bodies] == [
                (ending, "cancelled"),
                (cancelled, "cancelled"),
            ]
            secret = api.get("/v1/webhook_secret").json()["secret"]
            for headers, body, _ in receiver.calls:
                assert verify(secret, headers["Distillery-Signature"], body)
            for job_id in (ending, cancelled):
                log = events_of(api, job_id)
                attempts = [e for e in log if e["kind"] == "webhook_attempt"]
                assert [(a["data"]["status_code"], a["data"]["sender"]) for a in attempts] == [
                    (204, "sweep")
                ]
                assert [e["kind"] for e in log].count("webhook_delivered") == 1
            print(
                f"\nbroker outage: job-end webhook delivered by the sweep {first_after:.1f} s "
                f"after Redis stopped (Redis still down); cancel webhook delivered "
                f"{second_after:.1f} s after Redis and a worker came back; "
                f"{len(receiver.calls)} POSTs for 2 webhooks"
            )
    finally:
        processes.stop()
        redis.stop()
