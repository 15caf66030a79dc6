"""One job from claim to result: validate, train, store artifacts, record the outcome.

The database is the source of truth: every status change is a guarded update, so a job
is run by one worker only and a duplicate delivery finds nothing to claim. While a job
runs, its worker renews a lease (`heartbeat_at`); a job whose lease lapses is taken back
by `worker.maintenance` and resumes from its last checkpoint on another worker. The attempt
that lost it may still be running (a worker cut off from the network): every write of an
attempt holds its fence (`worker.fence`), so a stale attempt's writes are refused and it
stops without touching the job. Each attempt also has local directories of its own
(`work_dir`, `inputs_dir`) and checkpoints of its own (`Storage.checkpoint_dir`), so a
stale attempt and its successor on one host never write into, or remove, each other's.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from app.config import Settings, get_settings
from app.db import session_scope
from app.errors import NotFound, describe_validation_errors
from app.models import Artifact, Job, JobEvent, utcnow
from app.queue import enqueue_job, enqueue_webhook, queue_of
from app.schemas import TERMINAL_STATUSES, JobStatus
from app.services.files import get_file
from app.services.jobs import file_refs
from app.storage import Storage, open_storage
from worker.fence import Fence
from worker.kd.errors import Cancelled, KDError
from worker.kd.rank_files import job_description
from worker.kd.report.summary import HEADLINE
from worker.kd.spec import JobSpec
from worker.lifecycle import SHUTTING_DOWN
from worker.local_copies import InputCache, mirrored_checkpoints
from worker.processes import RankLost, run_on_processes
from worker.reporter import DatabaseReporter
from worker.trials import TRIAL_STOPS, TrialReporter, trial_reporter

log = logging.getLogger(__name__)


class FileMissing(KDError):
    code = "file_missing"


class NotEnoughGpus(KDError):
    code = "not_enough_gpus"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def transition(
    session: Session,
    job_id: str,
    source: Iterable[str],
    *conditions: ColumnElement[bool],
    **values: Any,
) -> bool:
    """Change the job only if it is in one of `source` (and meets `conditions`); True if
    it changed. This guarded update is how every status change stays single-owner."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(list(source)), *conditions)
        .values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def add_event(session: Session, job_id: str, kind: str, message: str, **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, message=message, data=data))


def claim(job_id: str) -> Job | None:
    """`queued → validating` for this worker; None if another delivery got there first."""
    with session_scope() as session:
        now = utcnow()
        claimed = transition(
            session,
            job_id,
            [JobStatus.queued],
            status=JobStatus.validating,
            worker=worker_name(),
            started_at=now,
            heartbeat_at=now,
            attempt=Job.attempt + 1,
        )
        if not claimed:
            return None
        job = session.get_one(Job, job_id)
        add_event(
            session,
            job_id,
            "validating",
            "Checking the teacher and the dataset.",
            attempt=job.attempt,
            worker=job.worker,
        )
        return job


def _finish(fence: Fence, status: JobStatus, event: str, **values: Any) -> None:
    """End the job, if this attempt still owns it."""
    with session_scope() as session:
        ended = fence.hold(session, status=status, finished_at=utcnow(), **values)
        if ended:
            add_event(session, fence.job_id, str(status), event)
    if ended:
        fence.ended.set()
    else:
        fence.refuse(f"end ({status})")


def fail(fence: Fence, code: str, message: str) -> None:
    _finish(fence, JobStatus.failed, message, error={"code": code, "message": message})


def hand_back(fence: Fence, reason: str) -> None:
    """Put a running job back in the queue (this run does not count as an attempt)."""
    job_id = fence.job_id
    with session_scope() as session:
        handed = transition(
            session,
            job_id,
            [JobStatus.validating, JobStatus.running],
            Job.attempt == fence.attempt,
            status=JobStatus.queued,
            worker=None,
            heartbeat_at=None,
            enqueued_at=utcnow(),
            attempt=Job.attempt - 1,
        )
        if handed:
            add_event(session, job_id, "requeued", reason)
            queue = queue_of(session.get_one(Job, job_id).spec)
    if handed:
        fence.ended.set()
        enqueue_job(job_id, queue)
    else:
        fence.refuse("hand-back")


@contextmanager
def heartbeat(fence: Fence, every: float) -> Iterator[None]:
    """Renew the job's lease from a thread while the body runs (validation, training and
    evaluation alike), so a busy step never looks like a dead worker. A renewal refused
    (the job was taken back and claimed again, or it ended) marks the attempt lost."""
    stop = threading.Event()
    job_id, me = fence.job_id, worker_name()

    def beat() -> None:
        while not stop.wait(every):
            try:
                with session_scope() as session:
                    owned = fence.hold(session, Job.worker == me, heartbeat_at=utcnow())
            except Exception:  # the database may be restarting; the next beat retries
                log.warning("heartbeat of job %s failed", job_id, exc_info=True)
                continue
            if not owned:
                if not fence.ended.is_set():
                    fence.refuse("heartbeat")
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every + 5)


def checkpoint_path(settings: Settings, fence: Fence) -> Path:
    """The attempt's checkpoint: a working copy whose snapshots are recorded in the store."""
    return open_storage(settings).checkpoint_dir(fence.job_id, fence.attempt) / "checkpoint.pt"


def record_checkpoints(fence: Fence, keys: dict[str, str]) -> bool:
    """Make `keys` the job's checkpoints, if this attempt still owns the job."""
    with session_scope() as session:
        return fence.hold(session, checkpoints=keys)


def work_dir(settings: Settings, fence: Fence) -> Path:
    """The attempt's own working directory (its outputs, the ranks' files). Two attempts of
    a job on one host (a stale one still running after its lease was lost, and the one
    that took the job over) never share it, nor remove each other's."""
    return settings.work_dir / f"{fence.job_id}-{fence.attempt}"


def inputs_dir(settings: Settings, fence: Fence) -> Path:
    """Where an attempt's input files are linked from the input cache while it runs."""
    return settings.work_dir / f"{fence.job_id}-{fence.attempt}-inputs"


def remove_local_dirs(settings: Settings, fence: Fence) -> None:
    """The attempt's working and inputs directories go (its checkpoints are in the store)."""
    shutil.rmtree(work_dir(settings, fence), ignore_errors=True)
    shutil.rmtree(inputs_dir(settings, fence), ignore_errors=True)


def run_job(job_id: str, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    job = claim(job_id)
    if job is None:
        log.info("job %s is not queued; nothing to do", job_id)
        return
    fence = Fence(job.id, job.attempt)
    try:
        with heartbeat(fence, settings.heartbeat_seconds):
            try:
                _run(job, fence, settings)
            finally:  # now, before a hand-back lets the next run (same attempt) begin
                remove_local_dirs(settings, fence)
    except Stopped as stop:  # a lost attempt stops quietly, whatever stopped it
        _stopped(fence, "lost" if fence.lost.is_set() else stop.reason)
    except RankLost as lost:
        retry_lost(fence, lost.reason, settings)
    except KDError as exc:
        fail(fence, exc.code, exc.message)
    except ValidationError as exc:  # a spec stored under an older schema
        fail(fence, "invalid_spec", describe_validation_errors(list(exc.errors())))
    except Exception as exc:
        log.exception("job %s failed unexpectedly", job_id)
        fail(
            fence,
            "internal_error",
            f"The worker hit an unexpected error ({type(exc).__name__}: {str(exc)[:300]}). "
            "Retry the job; if it fails again, report this message.",
        )
    # A stale attempt leaves the job, its webhook and its checkpoints to the owner.
    ended = not fence.lost.is_set() and announce_end(job_id)
    if ended:  # an ended job's checkpoints go
        open_storage(settings).delete_checkpoints(job_id)


class Stopped(Exception):
    """The loop stopped on request; `reason` is the reporter's stop reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _stopped(fence: Fence, reason: str) -> None:
    job_id = fence.job_id
    if reason == "lost":  # another attempt owns the job now: leave it alone
        dropped = ", ".join(f"{n} {kind}" for kind, n in sorted(fence.dropped.items()))
        log.warning(
            "job %s: stale attempt %d stopped; refused: %s; dropped unwritten: %s",
            job_id,
            fence.attempt,
            "; ".join(fence.refused),
            dropped or "nothing",
        )
    elif reason == "shutdown":
        hand_back(
            fence,
            "The worker is shutting down; the job goes back to the queue and "
            "resumes from its checkpoint.",
        )
    elif reason == "max_runtime":
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            limit = job.spec.get("training", {}).get("max_runtime_seconds")
        fail(
            fence,
            "max_runtime_exceeded",
            f"The job ran longer than training.max_runtime_seconds ({limit} s) and was stopped "
            "after a final checkpoint. Raise the limit or shorten training.",
        )
    elif reason in TRIAL_STOPS:  # a search's trial, stopped early: it ends, not fails
        message = TRIAL_STOPS[reason]
        _finish(fence, JobStatus.cancelled, message, error={"code": reason, "message": message})
    else:
        _finish(fence, JobStatus.cancelled, "Cancelled while running.")


def announce_end(job_id: str) -> bool:
    """If the job has ended, hurry its webhook (if any) to a worker; True when it has
    ended. The delivery was recorded with the end event: if the broker is down, the
    maintenance sweep sends it."""
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        ended = job.status in TERMINAL_STATUSES
        wanted = ended and job.webhook_url is not None
    if wanted:
        enqueue_webhook(job_id)
    return ended


def _run(job: Job, fence: Fence, settings: Settings) -> None:
    from worker.kd.engine import distill, prepare
    from worker.kd.training.checkpoint import Checkpointing
    from worker.kd.training.teacher_cache import (
        TeacherCache,  # torch loads here, in the worker only
    )

    started = time.monotonic()
    spec = JobSpec.model_validate(job.spec)
    _check_gpus(spec)
    storage = open_storage(settings)
    inputs = InputCache.of(settings)
    paths = {
        role: _input_path(inputs, job, role, file_id, inputs_dir(settings, fence))
        for role, file_id in file_refs(spec).items()
    }
    prepared = prepare(
        spec,
        paths["teacher"],
        paths.get("dataset"),
        paths.get("student"),
        max_student_params=settings.max_student_params,
        eval_dataset_path=paths.get("eval_dataset"),
    )
    planned: dict[str, Any] = {}
    if prepared.plan is not None:  # first claim: the chosen budget is stored with the job
        planned["spec"] = {**job.spec, "training": prepared.spec.training.model_dump(mode="json")}
        if prepared.spec.kind == "transformer":  # and the texts' augmentation decided with it
            augment = prepared.spec.distillation.augment.model_dump(mode="json")
            distillation = {**(job.spec.get("distillation") or {}), "augment": augment}
            planned["spec"]["distillation"] = distillation
    with session_scope() as session:
        if not transition(
            session,
            job.id,
            [JobStatus.validating],
            Job.attempt == fence.attempt,
            status=JobStatus.running,
            **planned,
        ):
            raise Stopped("cancelled")  # or taken back: the end is fenced as well
        add_event(session, job.id, "running", "Inputs are valid; training started.")
        if prepared.plan is not None:
            plan = prepared.plan
            add_event(
                session, job.id, "training_planned", plan.explanation,
                epochs=plan.training["epochs"], steps=plan.steps,
                learning_rate=plan.training["learning_rate"],
                batch_size=plan.training["batch_size"], planned=list(plan.planned),
                capped_by_time=plan.capped_by_time,
            )  # fmt: skip
    limit = spec.training.max_runtime_seconds
    database_reporter = DatabaseReporter(
        fence,
        settings.progress_flush_seconds,
        settings.cancel_poll_seconds,
        deadline=None if limit is None else started + limit,
        shutdown=SHUTTING_DOWN,
    )
    reporter: DatabaseReporter | TrialReporter = database_reporter
    if job.parent_id is not None:  # a search's trial: Optuna may prune it
        reporter = trial_reporter(database_reporter, job, settings)
    work = work_dir(settings, fence)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    checkpointing = Checkpointing(checkpoint_path(settings, fence), settings.checkpoint_every_steps)
    mirror = mirrored_checkpoints(
        storage,
        fence,
        checkpointing.path.parent,
        job.checkpoints,
        lambda keys: record_checkpoints(fence, keys),
    )
    try:
        cache = None
        if settings.teacher_cache_bytes:
            cache = TeacherCache(settings.teacher_cache_dir, settings.teacher_cache_bytes)
        with mirror:
            if spec.resources.processes > 1:  # data parallel: torchrun runs the ranks
                described = job_description(
                    prepared.spec.model_dump(mode="json"), dict(paths), work,
                    (checkpointing.path, checkpointing.every_steps), settings.max_student_params,
                    None if cache is None else (cache.root, cache.max_bytes),
                )  # fmt: skip
                report, artifacts = run_on_processes(
                    spec.resources.processes, described, work / "ranks", reporter
                )
            else:
                result = distill(prepared, work, reporter, checkpointing, cache)
                report, artifacts = result.report, result.artifacts
    except Cancelled as exc:
        if fence.lost.is_set():
            database_reporter.flush()  # counts what it holds as dropped; writes nothing
        raise Stopped(reporter.stop_reason or "cancelled") from exc
    finally:
        # What is worth keeping was pushed when the mirror closed; the working copy goes
        # now, before any hand-back lets the next run (same attempt number) begin.
        shutil.rmtree(checkpointing.path.parent, ignore_errors=True)
    reporter.flush()
    if fence.lost.is_set():
        raise Stopped("lost")
    _store_success(fence, storage, artifacts, report)


def retry_lost(fence: Fence, reason: str, settings: Settings) -> None:
    """A process of the attempt died: queue the job again to resume from its checkpoint,
    as the sweep does for a lost worker (the attempt counts), or fail it `worker_lost`
    after `max_attempts` runs; fenced like every write of the attempt."""
    if fence.attempt >= settings.max_attempts:
        fail(
            fence,
            "worker_lost",
            f"{reason}; the job has had {fence.attempt} attempts "
            f"(DISTILLERY_MAX_ATTEMPTS={settings.max_attempts}); it was not retried.",
        )
        return
    with session_scope() as session:
        requeued = fence.hold(
            session, Job.status.in_([JobStatus.validating, JobStatus.running]),
            status=JobStatus.queued, worker=None, heartbeat_at=None, enqueued_at=utcnow(),
        )  # fmt: skip
        if requeued:
            add_event(
                session, fence.job_id, "requeued",
                f"{reason}; queued again to resume from its last checkpoint "
                f"(attempt {fence.attempt + 1} of {settings.max_attempts}).",
            )  # fmt: skip
            queue = queue_of(session.get_one(Job, fence.job_id).spec)
    if requeued:
        fence.ended.set()
        enqueue_job(fence.job_id, queue)
    elif not fence.lost.is_set():  # being cancelled: the lost attempt completes the cancel
        _finish(fence, JobStatus.cancelled, "Cancelled while running.")


def _check_gpus(spec: JobSpec) -> None:
    import torch

    wanted, have = spec.resources.gpus, torch.cuda.device_count()
    if wanted > have:
        raise NotEnoughGpus(
            f"The job asks for {wanted} GPU(s) (resources.gpus) and its worker has {have}; "
            "send it to a queue whose workers have them (resources.queue)."
        )
    processes, device = spec.resources.processes, spec.training.device
    on_gpus = device == "cuda" or (device == "auto" and have > 0)
    if processes > 1 and on_gpus and processes > have:
        raise NotEnoughGpus(
            f"The job asks for {processes} processes (resources.processes), one GPU each, "
            f"and its worker has {have} GPU(s); ask for {have} processes at most, or send "
            "it to a queue whose workers have more GPUs (resources.queue)."
        )


def _input_path(inputs: InputCache, job: Job, role: str, file_id: str, into: Path) -> Path:
    """The input file on this machine (fetched into the worker's cache from an object store)."""
    missing = FileMissing(
        f"The {role} file {file_id!r} no longer exists; upload it again and submit a new job."
    )
    with session_scope() as session:
        try:
            file = get_file(session, job.tenant_id, file_id)
        except NotFound:
            raise missing from None
        stored, sha256 = file.path, file.sha256
    if not inputs.storage.exists("files", stored):
        raise missing
    return inputs.materialize("files", stored, sha256, into / role)


def job_result(report: dict[str, Any], artifact_names: list[str]) -> dict[str, Any]:
    """The short result on the job object (the report's headline figures, every task kind
    alike); the whole report is at /report."""
    summary: dict[str, Any] = {
        "teacher_accuracy": report["teacher"]["accuracy"],
        "student_accuracy": report["student"]["accuracy"],
    }
    summary.update({key: report.get(key) for key in HEADLINE})
    summary["artifacts"] = artifact_names
    return summary


def _store_success(
    fence: Fence, storage: Storage, artifacts: dict[str, Path], report: dict[str, Any]
) -> None:
    """Store the artifacts under the attempt's own prefix, then, holding the fence, end the
    job and list them; a stale attempt's end is refused and its objects are deleted."""
    job_id, attempt = fence.job_id, fence.attempt
    stored = {
        name: storage.put_artifact(job_id, name, path, attempt) for name, path in artifacts.items()
    }
    with session_scope() as session:
        done = fence.hold(
            session,
            status=JobStatus.succeeded,
            finished_at=utcnow(),
            progress=1.0,
            result=job_result(report, sorted(stored)),
        )
        if done:
            # An attempt that died after storing its files leaves rows behind: replace them.
            session.execute(delete(Artifact).where(Artifact.job_id == job_id))
            for name, (relative, size, sha256) in stored.items():
                session.add(
                    Artifact(job_id=job_id, name=name, bytes=size, sha256=sha256, path=relative)
                )
            student = report["student"]["accuracy"]
            add_event(session, job_id, "succeeded", f"Done: student accuracy {student:.4f}.")
    if done:
        fence.ended.set()
        storage.delete_checkpoints(job_id)  # at once: nothing resumes a succeeded job
        for earlier in range(1, attempt):  # files of attempts that died before their end
            storage.delete_job_artifacts(job_id, earlier)
    else:
        storage.delete_job_artifacts(job_id, attempt)
        fence.refuse(f"end (succeeded) and {len(stored)} artifact(s)")
