"""Keeping jobs moving when processes die: every worker runs this sweep now and then.

- A job whose lease lapsed (its worker was killed, lost power, or lost the database) goes
  back to the queue and resumes from its checkpoint; after `max_attempts` runs it fails
  with `worker_lost`. A lapsed job that was being cancelled ends `cancelled`.
- A running search (a parent whose trials are jobs of their own) holds no lease and is
  left alone; one that has not moved for a lease's time is moved on (`worker.search`).
- A job queued for longer than `requeue_after_seconds` is sent to the broker again, in case
  its message was lost (broker down at submit time, a broker restart without persistence).
  So is the validation of a file left `validating` that long (uploaded while the broker
  was down).
- Webhook deliveries that are due (their job ended while the broker was down, or an
  attempt failed and its backoff has passed) are sent (`app.services.webhooks`).

Every change is a guarded update on the row's current values, so any number of workers can
sweep at once and a job is taken back once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, not_, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from app.config import Settings
from app.db import session_scope
from app.models import File, Job, utcnow
from app.queue import enqueue_file_validation, enqueue_job, queue_of
from app.schemas import JobStatus
from app.services.webhooks import deliver_due
from worker.fence import ACTIVE
from worker.pipeline import add_event, announce_end, transition
from worker.search import SEARCH, advance, advance_stalled

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    files_resent: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    webhooks: list[str] = field(default_factory=list)


def sweep(settings: Settings) -> SweepResult:
    result = SweepResult()
    _reap_lapsed(settings, result)
    _resend_queued(settings, result)
    _resend_validating_files(settings, result)
    for job_id in result.requeued + result.resent:
        enqueue_job(job_id, _queue(job_id))
    for file_id in result.files_resent:
        enqueue_file_validation(file_id)
    for job_id in result.failed + result.cancelled:
        announce_end(job_id)
        _move_search(job_id, settings)
    result.searches = advance_stalled(settings)
    result.webhooks = [a.delivery_id for a in deliver_due(settings, sender="sweep")]
    return result


def _move_search(job_id: str, settings: Settings) -> None:
    """A trial the sweep ended moves its search on, as a worker's trial end does."""
    with session_scope() as session:
        parent_id = session.scalar(select(Job.parent_id).where(Job.id == job_id))
    if parent_id is not None:
        advance(parent_id, settings)


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
                not_(and_(Job.kind == SEARCH, Job.status == JobStatus.running)),
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


def _resend_validating_files(settings: Settings, result: SweepResult) -> None:
    """Files whose validation message was lost stay `validating`: send it again, once per
    `requeue_after_seconds` (validation of a file that is no longer validating is a no-op)."""
    cutoff = utcnow() - timedelta(seconds=settings.requeue_after_seconds)
    with session_scope() as session:
        stale = session.execute(
            select(File.id, File.enqueued_at).where(
                File.status == "validating", File.enqueued_at < cutoff
            )
        ).all()
        for file_id, enqueued_at in stale:
            claimed = session.execute(
                update(File)
                .where(File.id == file_id, File.enqueued_at == enqueued_at)
                .values(enqueued_at=utcnow())
            )
            if claimed.rowcount:  # type: ignore[attr-defined]
                result.files_resent.append(file_id)


def start_sweeper(settings: Settings, stop: threading.Event) -> threading.Thread:
    """Sweep every `maintenance_seconds` until `stop` is set (a daemon thread)."""

    def loop() -> None:
        while True:
            try:
                outcome = sweep(settings)
                if any(vars(outcome).values()):
                    log.warning("maintenance: %s", outcome)
            except Exception:  # e.g. the database is restarting; try again next round
                log.warning("maintenance sweep failed", exc_info=True)
            if stop.wait(settings.maintenance_seconds):
                return

    thread = threading.Thread(target=loop, name="distillery-maintenance", daemon=True)
    thread.start()
    return thread
