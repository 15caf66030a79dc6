"""Queues and the workers that serve them: heartbeats in, depth and live workers out.

Each worker process writes a heartbeat row (`workers`: name, queues, last seen); one seen
within `lease_seconds` is live. A queued job whose queue no live worker serves says so, and
`GET /v1/queues` shows every queue's depth beside its live workers. No tenant data here."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import Job, Worker, utcnow
from app.schemas import JobStatus, QueuePublic

RUNNING = (JobStatus.validating, JobStatus.running, JobStatus.cancelling)


def record_heartbeat(session: Session, name: str, queues: list[str]) -> None:
    """Say this worker is alive and what it serves (the row is created on the first beat)."""
    now = utcnow()
    seen = session.execute(
        update(Worker).where(Worker.name == name).values(queues=queues, last_seen=now)
    )
    if not seen.rowcount:  # type: ignore[attr-defined]
        session.add(Worker(name=name, queues=queues, started_at=now, last_seen=now))


def forget_worker(session: Session, name: str) -> None:
    session.execute(delete(Worker).where(Worker.name == name))


def live_workers(session: Session, settings: Settings) -> list[Worker]:
    since = utcnow() - timedelta(seconds=settings.lease_seconds)
    return list(session.scalars(select(Worker).where(Worker.last_seen >= since)))


def waiting_for(session: Session, queue: str, settings: Settings) -> str | None:
    """Why a queued job is not starting, when the reason is that no live worker serves
    its queue; None when one does."""
    if any(queue in worker.queues for worker in live_workers(session, settings)):
        return None
    return f"waiting for a worker on queue {queue!r}"


def _job_queue_column(settings: Settings):  # type: ignore[no-untyped-def]
    return func.coalesce(Job.spec["resources"]["queue"].as_string(), settings.queue)


def queue_overview(session: Session, settings: Settings) -> list[QueuePublic]:
    """Every queue that has unfinished jobs or live workers (and the default one)."""
    queue = _job_queue_column(settings)
    counts = session.execute(
        select(queue, Job.status, func.count())
        .where(Job.status.in_([JobStatus.queued, *RUNNING]))
        .group_by(queue, Job.status)
    ).all()
    rows: dict[str, QueuePublic] = {settings.queue: QueuePublic(name=settings.queue)}
    for name, status, count in counts:
        row = rows.setdefault(name, QueuePublic(name=name))
        if status == JobStatus.queued:
            row.queued += count
        else:
            row.running += count
    for worker in live_workers(session, settings):
        for name in worker.queues:
            if name != settings.control_queue:
                rows.setdefault(name, QueuePublic(name=name)).workers += 1
    return sorted(rows.values(), key=lambda row: row.name)


def last_seen(session: Session, name: str) -> datetime | None:
    return session.scalar(select(Worker.last_seen).where(Worker.name == name))
