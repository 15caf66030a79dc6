"""Webhook deliveries: recorded with the job's end, claimed, retried with backoff, expired.

Real SQLite database and a real HTTP receiver on 127.0.0.1; the end-to-end outage test
(broker stopped while a job ends) is in tests/e2e/test_webhooks.py.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.config import Settings
from app.db import session_scope
from app.ids import new_id
from app.models import Job, JobEvent, WebhookDelivery, utcnow
from app.services.keys import get_or_create_tenant
from app.services.webhooks import backoff_seconds, claim, deliver_due
from tests.app.conftest import spec


class Receiver(ThreadingHTTPServer):
    """Answers each POST with the next of `statuses` (the last repeats), after `delay` s."""

    def __init__(self, statuses: list[int], delay: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.statuses = statuses
        self.delay = delay
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.calls.append((dict(self.headers.items()), body))
            status = self.server.statuses[
                min(len(self.server.calls), len(self.server.statuses)) - 1
            ]
        time.sleep(self.server.delay)
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver([204])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_allow_hosts": ["127.0.0.1"],
        "webhook_timeout_seconds": 5.0,
        "webhook_backoff_seconds": 30.0,
        "webhook_max_attempts": 3,
    }
    return Settings(**(values | overrides))


def make_job(url: str | None, kind: str = "job", status: str = "running") -> str:
    with session_scope() as session:
        tenant = get_or_create_tenant(session, f"hooks-{uuid.uuid4().hex[:8]}")
        job = Job(
            id=new_id("job"),
            tenant_id=tenant.id,
            status=status,
            spec={"student": {"arch": "mlp"}},
            webhook_url=url,
            kind=kind,
        )
        session.add(job)
        return job.id


def end_job(job_id: str, status: str = "succeeded") -> None:
    """As the worker ends a job: a guarded update and its end event, in one transaction."""
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(status=status, finished_at=utcnow(), result={"student_accuracy": 0.5})
        )
        session.add(JobEvent(job_id=job_id, kind=status, message="Done."))


def deliveries(job_id: str) -> list[WebhookDelivery]:
    with session_scope() as session:
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
        return list(rows)


def events(job_id: str, prefix: str = "webhook_") -> list[JobEvent]:
    with session_scope() as session:
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        )
        return [e for e in rows if e.kind.startswith(prefix)]


def make_due(job_id: str) -> None:
    """Time passing: the next attempt's time is now."""
    with session_scope() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


def test_the_delivery_is_written_with_the_end_event_and_only_then(receiver: Receiver) -> None:
    job_id = make_job(receiver.url)
    with pytest.raises(RuntimeError), session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="failed"))
        session.add(JobEvent(job_id=job_id, kind="failed", message="x"))
        session.flush()
        assert session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id))
        raise RuntimeError("the end's transaction rolls back")
    assert deliveries(job_id) == []  # rolled back with the end event
    end_job(job_id)
    end_job(job_id)  # a second end event (none should come) adds no second delivery
    (row,) = deliveries(job_id)
    assert (row.status, row.attempts, row.event, row.url) == (
        "pending",
        0,
        "job.succeeded",
        receiver.url,
    )
    payload = json.loads(row.payload)
    assert payload["id"] == job_id and payload["status"] == "succeeded"
    assert payload["result"] == {"student_accuracy": 0.5}
    trial, plain = make_job(receiver.url, kind="trial"), make_job(None)
    end_job(trial)
    end_job(plain)
    assert deliveries(trial) == [] and deliveries(plain) == []
    attempted = deliver_due(settings(), job_id=job_id)
    assert [(a.ok, a.attempt, a.retry_in) for a in attempted] == [(True, 1, None)]
    ((headers, body),) = receiver.calls
    assert headers["Distillery-Event"] == "job.succeeded"
    assert headers["Distillery-Delivery"] == row.id
    assert json.loads(body) == payload
    (row,) = deliveries(job_id)
    assert row.status == "delivered" and row.delivered_at is not None and row.claimed_until is None
    assert [e.kind for e in events(job_id)] == ["webhook_attempt", "webhook_delivered"]
    assert events(job_id)[0].data["status_code"] == 204


def test_cancelling_a_queued_job_records_its_delivery(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    job = client.post(
        "/v1/jobs", headers=headers, json=spec(job_files, webhook_url="https://93.184.216.34/h")
    ).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 200
    (row,) = deliveries(job["id"])
    assert row.event == "job.cancelled" and json.loads(row.payload)["status"] == "cancelled"
    with session_scope() as session:  # not for sending from this test run: settle it
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(status="expired")
        )


def test_backoff_doubles_up_to_its_cap() -> None:
    s = settings(webhook_backoff_seconds=2.0, webhook_backoff_max_seconds=20.0)
    assert [backoff_seconds(s, n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]


def test_failed_attempts_back_off_then_expire(receiver: Receiver) -> None:
    receiver.statuses = [503]
    job_id = make_job(receiver.url)
    end_job(job_id, "failed")
    s = settings()
    first = deliver_due(s, job_id=job_id)
    assert [(a.ok, a.retry_in) for a in first] == [(False, 30.0)]
    assert deliver_due(s, job_id=job_id) == []  # not due for another 30 s
    (row,) = deliveries(job_id)
    assert row.status == "pending" and row.attempts == 1 and row.last_error == "HTTP 503"
    make_due(job_id)
    assert [a.retry_in for a in deliver_due(s, job_id=job_id)] == [60.0]
    make_due(job_id)
    assert [(a.attempt, a.retry_in) for a in deliver_due(s, job_id=job_id)] == [(3, None)]
    make_due(job_id)
    assert deliver_due(s, job_id=job_id) == []  # expired: never sent again
    (row,) = deliveries(job_id)
    assert row.status == "expired" and row.attempts == 3 and row.delivered_at is None
    assert len(receiver.calls) == 3
    assert len({h["Distillery-Delivery"] for h, _ in receiver.calls}) == 1
    log = events(job_id)
    assert [e.kind for e in log] == ["webhook_attempt"] * 3 + ["webhook_expired"]
    assert [e.data["status_code"] for e in log[:3]] == [503, 503, 503]
    assert "retrying in 30 s" in log[0].message and "retrying in 60 s" in log[1].message
    assert "DISTILLERY_WEBHOOK_MAX_ATTEMPTS=3" in log[3].message


def test_an_unreachable_receiver_is_an_attempt_with_its_error() -> None:
    job_id = make_job("http://127.0.0.1:9/hook")  # nothing listens on port 9
    end_job(job_id)
    (attempt,) = deliver_due(settings(), job_id=job_id)
    assert not attempt.ok and attempt.retry_in == 30.0
    (event,) = events(job_id)
    assert event.data["status_code"] is None and "ConnectError" in event.data["error"]
    with session_scope() as session:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.job_id == job_id).values(status="expired")
        )


def test_a_delivery_older_than_its_expiry_is_given_up_unsent(receiver: Receiver) -> None:
    job_id = make_job(receiver.url)
    end_job(job_id)
    with session_scope() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .values(created_at=utcnow() - timedelta(hours=2))
        )
    assert deliver_due(settings(webhook_expire_seconds=3600), job_id=job_id) == []
    assert receiver.calls == []
    (row,) = deliveries(job_id)
    assert row.status == "expired"
    (event,) = events(job_id)
    assert event.kind == "webhook_expired" and event.data["reason"] == "expired"


def test_a_claim_is_taken_once_and_a_lapsed_claim_is_taken_again(receiver: Receiver) -> None:
    job_id = make_job(receiver.url)
    end_job(job_id)
    (row,) = deliveries(job_id)
    s = settings()
    first = claim(s, row.id, 0)
    assert first is not None and first.attempt == 1
    assert claim(s, row.id, 0) is None  # what a second sender that read the row sees
    assert claim(s, row.id, 1) is None  # held by a live claim
    assert deliver_due(s, job_id=job_id) == []
    # The first sender died mid-send: its claim lapses and the delivery is sent after all.
    with session_scope() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == row.id)
            .values(claimed_until=utcnow() - timedelta(seconds=1))
        )
    assert [(a.ok, a.attempt) for a in deliver_due(s, job_id=job_id)] == [(True, 2)]
    assert len(receiver.calls) == 1


def test_concurrent_sweeps_deliver_once(receiver: Receiver) -> None:
    receiver.delay = 0.3  # each send is slow, so the sweeps overlap
    jobs = [make_job(receiver.url) for _ in range(3)]
    for job_id in jobs:
        end_job(job_id)
    s = settings()
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def sweep_all() -> None:
        try:
            barrier.wait()
            for job_id in jobs:
                deliver_due(s, job_id=job_id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=sweep_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    sent = sorted(json.loads(body)["id"] for _, body in receiver.calls)
    assert sent == sorted(jobs)  # each job's webhook exactly once
    for job_id in jobs:
        (row,) = deliveries(job_id)
        assert row.status == "delivered" and row.attempts == 1
        assert [e.kind for e in events(job_id)] == ["webhook_attempt", "webhook_delivered"]
