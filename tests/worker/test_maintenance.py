"""The sweep that keeps jobs moving when workers die or broker messages are lost."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from app.config import Settings
from app.db import session_scope
from app.ids import new_id
from app.migrate import upgrade_head
from app.models import Job, JobEvent, utcnow
from app.schemas import JobStatus
from app.services.keys import get_or_create_tenant
from worker.fence import Fence
from worker.maintenance import sweep
from worker.pipeline import hand_back

SETTINGS = Settings(lease_seconds=30, max_attempts=3, requeue_after_seconds=60)


@pytest.fixture(scope="module", autouse=True)
def _migrated() -> None:
    upgrade_head()


def make_job(
    status: JobStatus, attempt: int = 1, beat_age: float | None = 0.0, queued_age: float = 0.0
) -> str:
    with session_scope() as session:
        tenant = get_or_create_tenant(session, f"sweep-{uuid.uuid4().hex[:8]}")
        job = Job(
            id=new_id("job"),
            tenant_id=tenant.id,
            status=status,
            attempt=attempt,
            spec={"student": {"arch": "mlp"}},
            worker="gone:1",
            heartbeat_at=None if beat_age is None else utcnow() - timedelta(seconds=beat_age),
            enqueued_at=utcnow() - timedelta(seconds=queued_age),
        )
        session.add(job)
        return job.id


def state(job_id: str) -> tuple[str, int, dict | None, list[str]]:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        kinds = [e.kind for e in session.query(JobEvent).filter_by(job_id=job_id)]
        return job.status, job.attempt, job.error, kinds


def test_a_lapsed_job_is_queued_again() -> None:
    job_id = make_job(JobStatus.running, attempt=1, beat_age=120)
    result = sweep(SETTINGS)
    assert job_id in result.requeued
    status, attempt, error, kinds = state(job_id)
    assert (status, attempt, error, kinds) == ("queued", 1, None, ["requeued"])
    assert job_id not in sweep(SETTINGS).requeued  # taken back once


def test_a_live_job_is_left_alone() -> None:
    job_id = make_job(JobStatus.running, beat_age=5)
    result = sweep(SETTINGS)
    assert job_id not in result.requeued + result.failed
    assert state(job_id)[0] == "running"


def test_after_max_attempts_it_fails_worker_lost() -> None:
    job_id = make_job(JobStatus.validating, attempt=3, beat_age=120)
    assert job_id in sweep(SETTINGS).failed
    status, _, error, _ = state(job_id)
    assert status == "failed" and error is not None and error["code"] == "worker_lost"
    assert "3 attempts" in error["message"]


def test_a_lapsed_cancel_completes() -> None:
    job_id = make_job(JobStatus.cancelling, beat_age=None)
    assert job_id in sweep(SETTINGS).cancelled
    assert state(job_id)[0] == "cancelled"


def test_a_job_queued_too_long_is_sent_again() -> None:
    old = make_job(JobStatus.queued, attempt=0, beat_age=None, queued_age=600)
    fresh = make_job(JobStatus.queued, attempt=0, beat_age=None, queued_age=1)
    result = sweep(SETTINGS)
    assert old in result.resent and fresh not in result.resent
    assert old not in sweep(SETTINGS).resent  # its clock restarted


def test_hand_back_does_not_count_as_an_attempt() -> None:
    job_id = make_job(JobStatus.running, attempt=2)
    hand_back(Fence(job_id, 2), "shutting down")
    assert state(job_id)[:2] == ("queued", 1)
