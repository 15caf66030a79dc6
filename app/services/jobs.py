"""Jobs: create (with idempotency), read, list, cancel; their events, metrics and artifacts."""

from __future__ import annotations

import hashlib
import json

import asyncpg
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.errors import ApiError, Conflict, NotFound, Unprocessable
from app.ids import new_id
from app.models import Artifact, Job, JobEvent, Metric, utcnow
from app.queue import queue_of
from app.schemas import TERMINAL_STATUSES, JobCreate, JobPublic, JobStatus, TrialPublic
from app.services.files import get_file
from app.services.queues import waiting_for
from app.webhooks import check_target
from worker.kd.spec import SEARCH_METRICS, FileStudent, HFFileStudent, JobSpec
from worker.kd.student_size import student_parameters, too_large


def _request_hash(spec: JobCreate) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# The field that names each role's file, and the upload purpose it must have.
_ROLE_FIELDS: dict[str, tuple[str, str]] = {
    "teacher": ("teacher.file_id", "teacher"),
    "dataset": ("dataset.file_id", "dataset"),
    "eval_dataset": ("dataset.eval_file_id", "dataset"),
    "student": ("student.file_id", "student"),
}


def file_refs(spec: JobSpec) -> dict[str, str]:
    """The uploaded files a spec names, by role (teacher, dataset, eval_dataset, student)."""
    refs = {"teacher": spec.teacher.file_id}
    if spec.dataset.file_id is not None:
        refs["dataset"] = spec.dataset.file_id
    if spec.dataset.eval_file_id is not None:
        refs["eval_dataset"] = spec.dataset.eval_file_id
    if isinstance(spec.student, FileStudent | HFFileStudent):
        refs["student"] = spec.student.file_id
    return refs


def _check_files(session: Session, tenant_id: str, spec: JobCreate) -> None:
    for role, file_id in file_refs(spec).items():
        field, purpose = _ROLE_FIELDS[role]
        try:
            file = get_file(session, tenant_id, file_id)
        except NotFound:
            raise NotFound(
                f"{field}: there is no file {file_id!r} in your account; upload the "
                f"{purpose} first (POST /v1/files with purpose={purpose!r}) and use its id."
            ) from None
        if file.purpose != purpose:
            raise Unprocessable(
                f"{field}: file {file_id!r} was uploaded with purpose "
                f"{file.purpose!r}; upload the {purpose} with purpose={purpose!r}."
            )


def _check_student_size(spec: JobCreate, settings: Settings) -> None:
    """Refuse a registry student whose parameters, counted from the spec alone (a lower
    bound: the data's shape is not known here), pass the server's limit."""
    count = student_parameters(spec.student)
    refusal = None if count is None else too_large(count, settings.max_student_params, True)
    if refusal is not None:
        raise Unprocessable(f"student: {refusal}")


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
    _check_student_size(spec, settings)
    _check_files(session, tenant_id, spec)
    if spec.webhook_url:
        check_target(spec.webhook_url, settings)
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        status=JobStatus.queued,
        kind="search" if spec.search is not None else "job",
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


# The same read for asyncpg (db.read_pool): the same columns, PostgreSQL placeholders.
# asyncpg prepares it once per connection and then sends only its arguments.
PUBLIC_JOB_SQL = (
    f"SELECT {', '.join(c.name for c in _PUBLIC_COLUMNS)} FROM {Job.__tablename__}"
    " WHERE id = $1 AND tenant_id = $2"
)


def public_job(session: Session, tenant_id: str, job_id: str) -> JobPublic:
    """A job as the API shows it, less `waiting` (`with_waiting` adds it to a queued job)."""
    params = {"job_id": job_id, "tenant_id": tenant_id}
    row = session.connection().execute(_PUBLIC_JOB, params).mappings().first()
    if row is None:
        raise NotFound(f"No job {job_id!r}.")
    return JobPublic.model_validate(dict(row))


def with_waiting(session: Session, job: JobPublic) -> JobPublic:
    """Say why a queued job is not starting, if no live worker serves its queue."""
    if job.status == JobStatus.queued:
        job.waiting = waiting_for(session, queue_of(job.spec), get_settings())
    return job


async def public_job_pg(connection: asyncpg.Connection, tenant_id: str, job_id: str) -> JobPublic:
    """`public_job` over an asyncpg connection (PostgreSQL): the same job, or the same 404."""
    row = await connection.fetchrow(PUBLIC_JOB_SQL, job_id, tenant_id)
    if row is None:
        raise NotFound(f"No job {job_id!r}.")
    return JobPublic.model_validate(dict(row))


def list_jobs(
    session: Session,
    tenant_id: str,
    limit: int,
    after: str | None,
    status: JobStatus | None,
    include_trials: bool = False,
) -> tuple[list[JobPublic], bool]:
    """Newest first; `after` is the id of the last job of the previous page. A search's
    trials are listed only when asked for."""
    query = select(*_PUBLIC_COLUMNS).where(Job.tenant_id == tenant_id)
    if not include_trials:
        query = query.where(Job.parent_id.is_(None))
    if status is not None:
        query = query.where(Job.status == status)
    if after:
        query = query.where(Job.id < after)
    result = session.connection().execute(query.order_by(Job.id.desc()).limit(limit + 1))
    rows = [JobPublic.model_validate(dict(row)) for row in result.mappings()]
    return rows[:limit], len(rows) > limit


def cancel_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """Queued jobs end at once; running ones are asked to stop and end `cancelled` soon.
    A running search (no worker holds it) ends at once, and its trials are cancelled."""
    job = get_job(session, tenant_id, job_id)
    if job.status in TERMINAL_STATUSES:
        raise Conflict(f"Job {job_id!r} already ended ({job.status}); nothing to cancel.")
    if job.kind == "search" and job.status == JobStatus.running:
        job.status = JobStatus.cancelled
        job.finished_at = utcnow()
        message = "Cancelled; its running trials stop after their current step."
    elif job.status == JobStatus.queued:
        job.status = JobStatus.cancelled
        job.finished_at = utcnow()
        message = "Cancelled before it started."
    elif job.status != JobStatus.cancelling:
        job.status = JobStatus.cancelling
        message = "Cancel requested; the job stops after its current step."
    else:
        return job
    session.add(JobEvent(job_id=job.id, kind=str(job.status), message=message))
    session.flush()  # the search's row first: a trial ending now waits for this cancel
    if job.kind == "search":
        _cancel_trials(session, job.id)
    return job


def _cancel_trials(session: Session, parent_id: str) -> None:
    for source, target in (
        ((JobStatus.queued,), JobStatus.cancelled),
        ((JobStatus.validating, JobStatus.running), JobStatus.cancelling),
    ):
        ended = {"finished_at": utcnow()} if target == JobStatus.cancelled else {}
        trials = session.scalars(
            update(Job)
            .where(Job.parent_id == parent_id, Job.status.in_(source))
            .values(status=target, **ended)
            .returning(Job.id)
        ).all()
        for trial_id in trials:
            message = "Cancelled with its search." if ended else "Its search was cancelled."
            session.add(JobEvent(job_id=trial_id, kind=str(target), message=message))
    session.flush()


def list_trials(session: Session, job: Job) -> list[TrialPublic]:
    """A search's trials in order: the ended ones as recorded, the running ones with the
    selection metric of their latest epoch."""
    if job.kind != "search":
        raise NotFound(f"Job {job.id!r} is not a search; only a job with `search` has trials.")
    children = list(
        session.scalars(select(Job).where(Job.parent_id == job.id).order_by(Job.trial_number))
    )
    latest: dict[str, tuple[int, float]] = {}
    epochs: dict[str, set[int]] = {}
    running = [c.id for c in children if "outcome" not in (c.trial or {})]
    if running:
        rows = session.execute(
            select(Metric.job_id, Metric.epoch, Metric.value)
            .where(Metric.job_id.in_(running), Metric.name == SEARCH_METRICS[0])
            .order_by(Metric.id)
        )
        for child_id, epoch, value in rows:
            latest[child_id] = (epoch, value)
            epochs.setdefault(child_id, set()).add(epoch)
    trials = [_trial(c, latest.get(c.id), len(epochs.get(c.id, ()))) for c in children]
    complete = [t for t in trials if t.status == "complete" and t.value is not None]
    if complete:
        best = max(complete, key=lambda t: (t.value or 0.0, -t.number))
        best.best = True
    return trials


def _trial(child: Job, latest: tuple[int, float] | None, epochs_run: int) -> TrialPublic:
    trial = child.trial or {}
    outcome = trial.get("outcome")
    if outcome is not None:
        status, value, epochs_run = outcome, trial.get("value"), trial.get("epochs_run", 0)
    else:
        status = "queued" if child.status == JobStatus.queued else "running"
        value = None if latest is None else latest[1]
    return TrialPublic(
        number=child.trial_number or 0,
        job_id=child.id,
        status=status,
        params=trial.get("params", {}),
        value=value,
        epochs_run=epochs_run,
        pruned=outcome == "pruned",
    )


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
