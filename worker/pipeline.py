"""One job from claim to result: validate, train, store artifacts, record the outcome.

The database is the source of truth: every status change is a guarded update, so a job
is run by one worker only and a duplicate delivery finds nothing to claim.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import session_scope
from app.errors import NotFound, describe_validation_errors
from app.models import Artifact, Job, JobEvent, utcnow
from app.queue import enqueue_webhook
from app.schemas import TERMINAL_STATUSES, JobStatus
from app.services.files import get_file
from app.storage import Storage
from worker.kd.errors import Cancelled, KDError
from worker.kd.spec import JobSpec
from worker.reporter import DatabaseReporter

log = logging.getLogger(__name__)


class FileMissing(KDError):
    code = "file_missing"


ACTIVE = (JobStatus.validating, JobStatus.running, JobStatus.cancelling)
RESULT_KEYS = ("agreement", "quality_retained", "size_reduction", "speedup", "kd_gain")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _transition(session: Session, job_id: str, source: Iterable[str], **values: Any) -> bool:
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(list(source))).values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _event(session: Session, job_id: str, kind: str, message: str, **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, message=message, data=data))


def claim(job_id: str) -> Job | None:
    """`queued → validating` for this worker; None if another delivery got there first."""
    with session_scope() as session:
        claimed = _transition(
            session,
            job_id,
            [JobStatus.queued],
            status=JobStatus.validating,
            worker=worker_name(),
            started_at=utcnow(),
            attempt=Job.attempt + 1,
        )
        if not claimed:
            return None
        _event(session, job_id, "validating", "Checking the teacher and the dataset.")
        return session.get(Job, job_id)


def _finish(job_id: str, status: JobStatus, event: str, **values: Any) -> None:
    with session_scope() as session:
        if _transition(session, job_id, ACTIVE, status=status, finished_at=utcnow(), **values):
            _event(session, job_id, str(status), event)


def fail(job_id: str, code: str, message: str) -> None:
    _finish(job_id, JobStatus.failed, message, error={"code": code, "message": message})


def run_job(job_id: str, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    job = claim(job_id)
    if job is None:
        log.info("job %s is not queued; nothing to do", job_id)
        return
    work_dir = settings.work_dir / job_id
    try:
        _run(job, settings, work_dir)
    except Cancelled:
        _finish(job_id, JobStatus.cancelled, "Cancelled while running.")
    except KDError as exc:
        fail(job_id, exc.code, exc.message)
    except ValidationError as exc:  # a spec stored under an older schema
        fail(job_id, "invalid_spec", describe_validation_errors(list(exc.errors())))
    except Exception as exc:
        log.exception("job %s failed unexpectedly", job_id)
        fail(
            job_id,
            "internal_error",
            f"The worker hit an unexpected error ({type(exc).__name__}: {str(exc)[:300]}). "
            "Retry the job; if it fails again, report this message.",
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    _announce_end(job_id)


def _announce_end(job_id: str) -> None:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        wanted = job.webhook_url is not None and job.status in TERMINAL_STATUSES
    if wanted:
        enqueue_webhook(job_id)


def _run(job: Job, settings: Settings, work_dir: Path) -> None:
    from worker.kd.engine import distill, prepare  # torch loads here, in the worker only

    spec = JobSpec.model_validate(job.spec)
    storage = Storage(settings)
    teacher = _file_path(storage, job.tenant_id, "teacher", spec.teacher.file_id)
    dataset = _file_path(storage, job.tenant_id, "dataset", spec.dataset.file_id)
    prepared = prepare(spec, teacher, dataset)
    with session_scope() as session:
        if not _transition(session, job.id, [JobStatus.validating], status=JobStatus.running):
            raise Cancelled()
        _event(session, job.id, "running", "Inputs are valid; training started.")
    reporter = DatabaseReporter(
        job.id, settings.progress_flush_seconds, settings.cancel_poll_seconds
    )
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    result = distill(prepared, work_dir, reporter)
    reporter.flush()
    _store_success(job.id, storage, result.artifacts, result.report)


def _file_path(storage: Storage, tenant_id: str, role: str, file_id: str) -> Path:
    with session_scope() as session:
        try:
            path = storage.file_path(get_file(session, tenant_id, file_id).path)
        except NotFound:
            path = None
    if path is None or not path.exists():
        raise FileMissing(
            f"The {role} file {file_id!r} no longer exists; upload it again and submit a new job."
        )
    return path


def summarize(report: dict[str, Any], artifact_names: list[str]) -> dict[str, Any]:
    """The short result on the job object; the whole report is at /report."""
    summary: dict[str, Any] = {
        "teacher_accuracy": report["teacher"]["accuracy"],
        "student_accuracy": report["student"]["accuracy"],
    }
    summary.update({key: report.get(key) for key in RESULT_KEYS})
    summary["artifacts"] = artifact_names
    return summary


def _store_success(
    job_id: str, storage: Storage, artifacts: dict[str, Path], report: dict[str, Any]
) -> None:
    stored = {name: storage.put_artifact(job_id, name, path) for name, path in artifacts.items()}
    with session_scope() as session:
        for name, (relative, size, sha256) in stored.items():
            session.add(
                Artifact(job_id=job_id, name=name, bytes=size, sha256=sha256, path=relative)
            )
        done = _transition(
            session,
            job_id,
            ACTIVE,
            status=JobStatus.succeeded,
            finished_at=utcnow(),
            progress=1.0,
            result=summarize(report, sorted(stored)),
        )
        if not done:
            session.rollback()
            storage.delete_job_artifacts(job_id)
            return
        student = report["student"]["accuracy"]
        _event(session, job_id, "succeeded", f"Done: student accuracy {student:.4f}.")
