"""Issue 15's fault findings on the worker side (items 7 and 8), against the real test
database: a file whose validation message was lost is sent again by the sweep, and a
resumed run's replayed steps do not duplicate metric points."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.config import Settings, get_settings
from app.db import session_scope
from app.ids import new_id
from app.migrate import upgrade_head
from app.models import File, Metric, utcnow
from app.schemas import JobStatus
from app.services.keys import get_or_create_tenant
from app.storage import open_storage
from tests.factories import small_dataset
from tests.worker.test_pipeline import make_job
from worker.fence import Fence
from worker.file_validation import validate_file
from worker.maintenance import sweep
from worker.reporter import DatabaseReporter

SETTINGS = Settings(requeue_after_seconds=60)


@pytest.fixture(scope="module", autouse=True)
def _migrated() -> None:
    upgrade_head()


def make_validating_file(age_seconds: float) -> str:
    """A dataset upload whose validation message never reached a worker."""
    storage = open_storage(get_settings())
    with session_scope() as session:
        tenant = get_or_create_tenant(session, f"files-{uuid.uuid4().hex[:8]}")
        file_id = new_id("file")
        relative = f"{tenant.id}/{file_id}"
        path = storage.file_path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(small_dataset())
        session.add(
            File(
                id=file_id,
                tenant_id=tenant.id,
                purpose="dataset",
                filename="d.npz",
                bytes=path.stat().st_size,
                sha256="0" * 64,
                format="npz",
                status="validating",
                details={},
                path=relative,
                enqueued_at=utcnow() - timedelta(seconds=age_seconds),
            )
        )
    return file_id


def test_a_file_left_validating_is_sent_again_once() -> None:
    stuck, fresh = make_validating_file(600), make_validating_file(0)
    first = sweep(SETTINGS)
    assert stuck in first.files_resent and fresh not in first.files_resent
    assert stuck not in sweep(SETTINGS).files_resent  # not again until requeue_after_seconds pass
    assert validate_file(stuck, get_settings()) == "ready"  # what the re-sent task does


def test_a_resumed_run_does_not_duplicate_metric_points() -> None:
    """kill -9 after step 6 with the checkpoint at step 3: the next run replays 4..6."""
    job_id = make_job(JobStatus.running)
    first = DatabaseReporter(Fence(job_id, 0), flush_seconds=0, cancel_poll_seconds=3600)
    for step in range(1, 7):
        first.metric("train_loss", 1.0 / step, step=step, epoch=1)
    resumed = DatabaseReporter(Fence(job_id, 0), flush_seconds=3600, cancel_poll_seconds=3600)
    for step in range(4, 10):
        resumed.metric("train_loss", 1.0 / step, step=step, epoch=1)
    resumed.flush()
    with session_scope() as session:
        steps = session.scalars(
            select(Metric.step).where(Metric.job_id == job_id).order_by(Metric.step)
        ).all()
    assert list(steps) == list(range(1, 10))
