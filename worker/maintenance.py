"""Keeping jobs moving when processes die: every worker runs this sweep now and then.

- A job whose lease lapsed (its worker was killed, lost power, or lost the database) goes
  back to the queue and resumes from its checkpoint; after `max_attempts` runs it fails
  with `worker_lost`. A lapsed job that was being cancelled ends `cancelled`.
- A job queued for longer than `requeue_after_seconds` is sent to the broker again, in case
  its message was lost (broker down at submit time, a broker restart without persistence).

Every change is a guarded update on the row's current values, so any number of workers can
sweep at once and a job is taken back once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from app.config import Settings
from app.db import session_scope
from app.models import Job, utcnow
from app.queue import enqueue_job, queue_of
from app.schemas import JobStatus
from worker.pipeline import ACTIVE, add_event, announce_end, transition

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)


def sweep(settings: Settings) -> SweepResult:
    result = SweepResult()
    _reap_lapsed(settings, result)
    _resend_queued(settings, result)
    for job_id in result.requeued + result.resent:
        enqueue_job(job_id, _queue(job_id))
    for job_id in result.failed + result.cancelled:
        announce_end(job_id)
    return result


def _queue(job_id: str) -> str:
    """The job's own queue: a job for `a100` workers is re-sent to them."""
    with session_scope() as session:
        return queue_of(session.get_one(Job, job_id).spec)


def _reap_lapsed(settings: Settings, result: SweepResult) -> None:
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.lease_seconds)
    with session_scope() as session:
        lapsed = session.execute(
            select(Job.id, Job.status, Job.attempt, Job.heartbeat_at).where(
                Job.status.in_(ACTIVE),
                or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None)),
            )
        ).all()
    for job_id, status, attempt, beat in lapsed:
        # Guarded on the heartbeat seen: a worker that beat since, or another sweeper that
        # took the job first, makes the update match nothing.
        unchanged = Job.heartbeat_at == beat if beat is not None else Job.heartbeat_at.is_(None)
        with session_scope() as session:
            _take_back(session, (job_id, status, attempt), unchanged, settings, result)


def _take_back(
    session: Session,
    job: tuple[str, str, int],
    unchanged: ColumnElement[bool],
    settings: Settings,
    result: SweepResult,
) -> None:
    job_id, status, attempt = job
    lost = f"The worker running attempt {attempt} stopped answering"
    if status == JobStatus.cancelling:
        if transition(
            session, job_id, [status], unchanged, status=JobStatus.cancelled, finished_at=utcnow()
        ):
            add_event(session, job_id, "cancelled", f"{lost}; the cancel is complete.")
            result.cancelled.append(job_id)
    elif attempt < settings.max_attempts:
        if transition(
            session,
            job_id,
            [status],
            unchanged,
            status=JobStatus.queued,
            worker=None,
            heartbeat_at=None,
            enqueued_at=utcnow(),
        ):
            add_event(
                session,
                job_id,
                "requeued",
                f"{lost}; queued again to resume from its last checkpoint "
                f"(attempt {attempt + 1} of {settings.max_attempts}).",
            )
            result.requeued.append(job_id)
    else:
        message = (
            f"{lost}, and the job has had {attempt} attempts "
            f"(DISTILLERY_MAX_ATTEMPTS={settings.max_attempts}); it was not retried."
        )
        if transition(
            session,
            job_id,
            [status],
            unchanged,
            status=JobStatus.failed,
            finished_at=utcnow(),
            error={"code": "worker_lost", "message": message},
        ):
            add_event(session, job_id, "failed", message)
            result.failed.append(job_id)


def _resend_queued(settings: Settings, result: SweepResult) -> None:
    cutoff = utcnow() - timedelta(seconds=settings.requeue_after_seconds)
    with session_scope() as session:
        stale = session.execute(
            select(Job.id, Job.enqueued_at).where(
                Job.status == JobStatus.queued, Job.enqueued_at < cutoff
            )
        ).all()
    for job_id, enqueued_at in stale:
        with session_scope() as session:
            if transition(
                session,
                job_id,
                [JobStatus.queued],
                Job.enqueued_at == enqueued_at,
                enqueued_at=utcnow(),
            ):
                result.resent.append(job_id)


def start_sweeper(settings: Settings, stop: threading.Event) -> threading.Thread:
    """Sweep every `maintenance_seconds` until `stop` is set (a daemon thread)."""

    def loop() -> None:
        while True:
            try:
                outcome = sweep(settings)
                if outcome.requeued or outcome.failed or outcome.cancelled or outcome.resent:
                    log.warning("maintenance: %s", outcome)
            except Exception:  # e.g. the database is restarting; try again next round
                log.warning("maintenance sweep failed", exc_info=True)
            if stop.wait(settings.maintenance_seconds):
                return

    thread = threading.Thread(target=loop, name="distillery-maintenance", daemon=True)
    thread.start()
    return thread
