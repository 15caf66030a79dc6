"""A job's messages go to its own queue, whoever sends them: the API at submit, the sweep
when a message was lost or a lease lapsed. Read back from the real (SQLite) broker."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from app.config import Settings, get_settings
from app.db import session_scope
from app.ids import new_id
from app.migrate import upgrade_head
from app.models import Job, utcnow
from app.queue import enqueue_file_validation
from app.schemas import JobStatus
from app.services.keys import get_or_create_tenant
from worker.celery_app import RUN_JOB_TASK, VALIDATE_FILE_TASK, celery_app
from worker.maintenance import sweep

SETTINGS = Settings(lease_seconds=30, requeue_after_seconds=60)


@pytest.fixture(scope="module", autouse=True)
def _migrated() -> None:
    upgrade_head()


def drain(queue: str) -> list[tuple[str, list[object]]]:
    """(task name, args) of every message waiting in `queue`, taken off it."""
    found = []
    with celery_app.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue)
        try:
            while True:
                try:
                    message = simple.get(timeout=1)
                except simple.Empty:
                    return found
                body = message.body if isinstance(message.body, list) else json.loads(message.body)
                found.append((message.headers["task"], body[0]))
                message.ack()
        finally:
            simple.close()


def old_queued_job(queue: str | None) -> str:
    with session_scope() as session:
        tenant = get_or_create_tenant(session, f"route-{uuid.uuid4().hex[:8]}")
        job = Job(
            id=new_id("job"),
            tenant_id=tenant.id,
            status=JobStatus.queued,
            spec={"resources": {"queue": queue, "gpus": 0}},
            enqueued_at=utcnow() - timedelta(seconds=120),
        )
        session.add(job)
        return job.id


def test_the_sweep_resends_a_job_to_its_own_queue() -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    drain(queue)
    job_id = old_queued_job(queue)
    assert job_id in sweep(SETTINGS).resent
    assert (RUN_JOB_TASK, [job_id]) in drain(queue)


def test_file_validation_goes_to_the_control_queue() -> None:
    control = get_settings().control_queue
    drain(control)
    assert enqueue_file_validation("file_routing_check")
    assert drain(control) == [(VALIDATE_FILE_TASK, ["file_routing_check"])]
