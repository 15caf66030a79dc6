"""Jobs: create (with idempotency), read, list, cancel; their events, metrics and artifacts."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.errors import ApiError, Conflict, NotFound, Unprocessable
from app.ids import new_id
from app.models import Artifact, Job, JobEvent, Metric, utcnow
from app.queue import queue_of
from app.schemas import TERMINAL_STATUSES, JobCreate, JobPublic, JobStatus
from app.services.files import get_file
from app.services.queues import waiting_for
from app.webhooks import check_target
from worker.kd.spec import FileStudent, JobSpec


def _request_hash(spec: JobCreate) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_refs(spec: JobSpec) -> dict[str, str]:
    """The uploaded files a spec names, by role (teacher, dataset, student)."""
    refs = {"teacher": spec.teacher.file_id}
    if spec.dataset.file_id is not None:
        refs["dataset"] = spec.dataset.file_id
    if isinstance(spec.student, FileStudent):
        refs["student"] = spec.student.file_id
    return refs


def _check_files(session: Session, tenant_id: str, spec: JobCreate) -> None:
    for role, file_id in file_refs(spec).items():
        purpose = role
        file = get_file(session, tenant_id, file_id)
        if file.purpose != purpose:
            raise Unprocessable(
                f"{role}.file_id: file {file_id!r} was uploaded with purpose "
                f"{file.purpose!r}; upload the {role} with purpose={purpose!r}."
            )


def create_job(
    session: Session,
    tenant_id: str,
    spec: JobCreate,
    idempotency_key: str | None,
    settings: Settings,
) -> tuple[Job, bool]:
    """Record a queued job; returns (job, created). A repeated idempotency key returns the
    original job when the body is the same and is a conflict when it is not."""
    request_hash = _request_hash(spec)
    if idempotency_key:
        existing = _by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return _replay(existing, request_hash), False
    _check_files(session, tenant_id, spec)
    if spec.webhook_url:
        check_target(spec.webhook_url, settings)
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        status=JobStatus.queued,
        spec=spec.model_dump(mode="json", exclude={"webhook_url"}),
        webhook_url=spec.webhook_url,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    session.add(job)
    session.add(JobEvent(job_id=job.id, kind="queued", message="Job created and queued."))
    try:
        session.flush()
    except IntegrityError:
        # Another request with the same key won the race; this request wrote nothing else.
        session.rollback()
        existing = _by_idempotency_key(session, tenant_id, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, request_hash), False
    return job, True


def _by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def _replay(job: Job, request_hash: str) -> Job:
    if job.request_hash != request_hash:
        raise Conflict(
            "This Idempotency-Key was already used with a different job spec; "
            "use a new key for a new job.",
            code="idempotency_key_reused",
        )
    return job


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise NotFound(f"No job {job_id!r}.")
    return job


# The API's reads select just the public columns with Core, on the session's connection:
# 105 us against 280 for an ORM load of the same row (BENCHMARKS.md, section 2).
_PUBLIC_COLUMNS = [c for c in Job.__table__.c if c.key in JobPublic.model_fields]


# Built once: SQLAlchemy then reuses its compiled form without a cache-key walk per call.
_PUBLIC_JOB = select(*_PUBLIC_COLUMNS).where(
    Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id")
)


def public_job(session: Session, tenant_id: str, job_id: str) -> JobPublic:
    """A job as the API shows it."""
    params = {"job_id": job_id, "tenant_id": tenant_id}
    row = session.connection().execute(_PUBLIC_JOB, params).mappings().first()
    if row is None:
        raise NotFound(f"No job {job_id!r}.")
    return with_waiting(session, JobPublic.model_validate(dict(row)))


def with_waiting(session: Session, job: JobPublic) -> JobPublic:
    """Say why a queued job is not starting, if no live worker serves its queue."""
    if job.status == JobStatus.queued:
        job.waiting = waiting_for(session, queue_of(job.spec), get_settings())
    return job


def list_jobs(
    session: Session, tenant_id: str, limit: int, after: str | None, status: JobStatus | None
) -> tuple[list[JobPublic], bool]:
    """Newest first; `after` is the id of the last job of the previous page."""
    query = select(*_PUBLIC_COLUMNS).where(Job.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Job.status == status)
    if after:
        query = query.where(Job.id < after)
    result = session.connection().execute(query.order_by(Job.id.desc()).limit(limit + 1))
    rows = [JobPublic.model_validate(dict(row)) for row in result.mappings()]
    return rows[:limit], len(rows) > limit


def cancel_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """Queued jobs end at once; running ones are asked to stop and end `cancelled` soon."""
    job = get_job(session, tenant_id, job_id)
    if job.status in TERMINAL_STATUSES:
        raise Conflict(f"Job {job_id!r} already ended ({job.status}); nothing to cancel.")
    if job.status == JobStatus.queued:
        job.status = JobStatus.cancelled
        job.finished_at = utcnow()
        message = "Cancelled before it started."
    elif job.status != JobStatus.cancelling:
        job.status = JobStatus.cancelling
        message = "Cancel requested; the job stops after its current step."
    else:
        return job
    session.add(JobEvent(job_id=job.id, kind=str(job.status), message=message))
    session.flush()
    return job


def list_events(session: Session, job: Job, after: int | None, limit: int) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job.id)
    if after is not None:
        query = query.where(JobEvent.id > after)
    return list(session.scalars(query.order_by(JobEvent.id).limit(limit)))


def list_metrics(session: Session, job: Job, name: str | None) -> list[Metric]:
    query = select(Metric).where(Metric.job_id == job.id)
    if name:
        query = query.where(Metric.name == name)
    return list(session.scalars(query.order_by(Metric.id)))


def list_artifacts(session: Session, job: Job) -> list[Artifact]:
    return list(
        session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.name))
    )


def get_artifact(session: Session, job: Job, name: str) -> Artifact:
    artifact = session.scalar(
        select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name)
    )
    if artifact is None:
        hint = "" if job.status == JobStatus.succeeded else f" (the job is {job.status})"
        raise NotFound(f"Job {job.id!r} has no artifact {name!r}{hint}.")
    return artifact


def report_missing(job: Job) -> ApiError:
    if job.status in TERMINAL_STATUSES:
        return NotFound(f"Job {job.id!r} ended {job.status} and has no report.")
    return NotFound(
        f"Job {job.id!r} is {job.status}; its report is written when it succeeds.",
        code="report_not_ready",
    )
