"""The pipeline's database side: exclusive claims, bounded writes, cancel checks."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.ids import new_id
from app.migrate import upgrade_head
from app.models import Job, JobEvent, Metric
from app.schemas import JobStatus
from app.services.keys import get_or_create_tenant
from worker.pipeline import claim, run_job
from worker.reporter import DatabaseReporter


@pytest.fixture(scope="module", autouse=True)
def _migrated() -> None:
    upgrade_head()


def make_job(status: JobStatus = JobStatus.queued) -> str:
    with session_scope() as session:
        tenant = get_or_create_tenant(session, f"pipeline-{uuid.uuid4().hex[:8]}")
        job = Job(
            id=new_id("job"),
            tenant_id=tenant.id,
            status=status,
            spec={
                "teacher": {"file_id": "file_gone"},
                "student": {"arch": "mlp"},
                "dataset": {"file_id": "file_y"},
            },
        )
        session.add(job)
        return job.id


def job_state(job_id: str) -> tuple[str, int, int]:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        events = session.scalar(select(func.count()).where(JobEvent.job_id == job_id))
        return job.status, job.attempt, int(events or 0)


def test_a_job_is_claimed_once() -> None:
    job_id = make_job()
    first = claim(job_id)
    assert first is not None and first.status == JobStatus.validating and first.attempt == 1
    assert claim(job_id) is None
    assert job_state(job_id) == (JobStatus.validating, 1, 1)


@pytest.mark.parametrize(
    "status", [JobStatus.running, JobStatus.succeeded, JobStatus.cancelled, JobStatus.failed]
)
def test_a_second_delivery_does_nothing(status: JobStatus) -> None:
    job_id = make_job(status)
    before = job_state(job_id)
    run_job(job_id)
    assert job_state(job_id) == before


def test_a_job_whose_files_vanished_fails_with_a_message() -> None:
    job_id = make_job()
    run_job(job_id)
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert job.status == JobStatus.failed
        assert job.error is not None
        assert job.error == {
            "code": "file_missing",
            "message": "The teacher file 'file_gone' no longer exists; upload it again and "
            "submit a new job.",
        }


def test_reporter_writes_at_a_bounded_rate() -> None:
    job_id = make_job(JobStatus.running)
    reporter = DatabaseReporter(job_id, flush_seconds=3600, cancel_poll_seconds=3600)
    for step in range(1, 1001):
        reporter.metric("train_loss", 1.0 / step, step=step, epoch=1)
        reporter.progress(step / 1000, epoch=1, step=step)
    assert reporter.writes == 0
    reporter.event("epoch_end", "Epoch 1/1")
    assert reporter.writes == 1
    with session_scope() as session:
        count = session.scalar(select(func.count()).where(Metric.job_id == job_id))
        assert count == 1000
        assert session.get_one(Job, job_id).progress == 1.0


def test_reporter_sees_a_cancel_request() -> None:
    job_id = make_job(JobStatus.running)
    reporter = DatabaseReporter(job_id, flush_seconds=0, cancel_poll_seconds=0)
    assert reporter.should_stop() is False
    with session_scope() as session:
        session.get_one(Job, job_id).status = JobStatus.cancelling
    assert reporter.should_stop() is True


def test_a_stored_spec_that_no_longer_validates_fails_readably() -> None:
    job_id = make_job()
    with session_scope() as session:
        session.get_one(Job, job_id).spec = {"teacher": {"file_id": "f"}}
    run_job(job_id)
    with session_scope() as session:
        error = session.get_one(Job, job_id).error
    assert error is not None and error["code"] == "invalid_spec"
    assert "student: Field required" in error["message"]
