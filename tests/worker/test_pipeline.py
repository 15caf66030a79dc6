"""The pipeline's database side: exclusive claims, bounded writes, cancel checks."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import func, select
from torch import nn

from app.config import get_settings
from app.db import session_scope
from app.ids import new_id
from app.migrate import upgrade_head
from app.models import Job, JobEvent, Metric
from app.schemas import JobStatus
from app.services.files import create_file
from app.services.keys import get_or_create_tenant
from app.storage import open_storage
from app.uploads import ReceivedFile
from worker.fence import Fence
from worker.kd.budget import PLANNED_FIELDS
from worker.kd.spec import DEFAULT_TOKEN_SHARE, JobSpec
from worker.lifecycle import SHUTTING_DOWN
from worker.pipeline import claim, inputs_dir, remove_local_dirs, run_job, work_dir
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
    reporter = DatabaseReporter(Fence(job_id, 0), flush_seconds=3600, cancel_poll_seconds=3600)
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
    reporter = DatabaseReporter(Fence(job_id, 0), flush_seconds=0, cancel_poll_seconds=0)
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


def requeue_and_run(job_id: str) -> None:
    """Back to the queue, as the lease sweep does, and run again (a second attempt)."""
    with session_scope() as session:
        session.get_one(Job, job_id).status = JobStatus.queued
    run_job(job_id)


def _received(path: Path) -> ReceivedFile:
    data = path.read_bytes()
    return ReceivedFile(path.name, path, len(data), hashlib.sha256(data).hexdigest(), data[:512])


def tensor_job(tmp_path: Path, training: dict[str, Any]) -> str:
    """A queued job distilling a small TorchScript teacher into an MLP on stored files."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    torch.manual_seed(0)
    torch.jit.script(nn.Sequential(nn.Linear(8, 2))).save(str(tmp_path / "teacher.pt"))
    storage = open_storage(get_settings())
    with session_scope() as session:
        tenant = get_or_create_tenant(session, f"plan-{uuid.uuid4().hex[:8]}")
        teacher, _ = create_file(
            session, storage, tenant.id, "teacher", _received(tmp_path / "teacher.pt")
        )
        dataset, _ = create_file(
            session, storage, tenant.id, "dataset", _received(tmp_path / "data.npz")
        )
        bare = JobSpec.model_validate(
            {
                "teacher": {"file_id": teacher.id},
                "dataset": {"file_id": dataset.id},
                "student": {"arch": "mlp", "hidden": [4]},
                "training": training,
            }
        )
        job = Job(
            id=new_id("job"), tenant_id=tenant.id, status=JobStatus.queued,
            spec=bare.model_dump(mode="json"),
        )  # fmt: skip
        session.add(job)
        return job.id


def test_the_planned_budget_is_stored_at_the_first_claim_and_not_planned_again(
    tmp_path: Path,
) -> None:
    """A spec with no training schedule is planned once: the first attempt stores the plan
    with the job and says what it chose; a resumed attempt runs the stored numbers."""
    job_id = tensor_job(tmp_path, {"budget_seconds": 0.001})  # caps the plan to one epoch

    def planned_events() -> list[JobEvent]:
        with session_scope() as session:
            query = select(JobEvent).where(
                JobEvent.job_id == job_id, JobEvent.kind == "training_planned"
            )
            return list(session.scalars(query))

    run_job(job_id)
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert job.status == JobStatus.succeeded, job.error
        stored = dict(job.spec["training"])
    assert all(stored[name] is not None for name in PLANNED_FIELDS)
    assert stored["epochs"] == 1 and stored["budget_seconds"] == 0.001
    (event,) = planned_events()
    assert event.data["epochs"] == 1 and event.data["capped_by_time"] is True
    assert "budget_seconds" in event.message

    requeue_and_run(job_id)
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert job.status == JobStatus.succeeded and job.attempt == 2
        assert job.spec["training"] == stored
    assert len(planned_events()) == 1


# Local directories -------------------------------------------------------------------------

TRAINING = {"epochs": 2, "batch_size": 32, "learning_rate": 1e-2}


def events_of(job_id: str) -> list[str]:
    with session_scope() as session:
        query = select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        return list(session.scalars(query))


def test_two_attempts_on_one_host_keep_to_their_own_local_directories(tmp_path: Path) -> None:
    """Attempt 1 lost its lease and is still running here (its directories in use); attempt
    2 takes the job over on this host, runs it in directories of its own and removes only
    those when it ends."""
    settings = get_settings()
    job_id = tensor_job(tmp_path, TRAINING)
    with session_scope() as session:  # as the lease sweep leaves it: queued after attempt 1
        session.get_one(Job, job_id).attempt = 1
    stale, taking_over = Fence(job_id, 1), Fence(job_id, 2)
    dirs = [work_dir(settings, stale), inputs_dir(settings, stale),
            work_dir(settings, taking_over), inputs_dir(settings, taking_over)]  # fmt: skip
    assert len(set(dirs)) == 4
    assert not any(a != b and a.is_relative_to(b) for a in dirs for b in dirs)
    for directory in dirs[:2]:
        directory.mkdir(parents=True)
        (directory / "in-use").write_text("attempt 1")

    run_job(job_id)
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.attempt) == (JobStatus.succeeded, 2), job.error
    assert [(d / "in-use").read_text() for d in dirs[:2]] == ["attempt 1"] * 2
    assert not dirs[2].exists() and not dirs[3].exists()
    remove_local_dirs(settings, stale)  # what attempt 1 does when it stops
    assert not list(settings.work_dir.glob(f"{job_id}*"))


def test_a_handed_back_job_leaves_no_local_directories_and_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    """A worker shutting down hands the job back (the next run has the same attempt number):
    its directories are gone before the job is queued again, and the next run resumes from
    the checkpoint the store kept."""
    settings = get_settings()
    job_id = tensor_job(tmp_path, TRAINING)
    SHUTTING_DOWN.set()  # what the worker's shutdown signal sets: stop at the next step
    try:
        run_job(job_id)
    finally:
        SHUTTING_DOWN.clear()
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.attempt) == (JobStatus.queued, 0)
        assert job.checkpoints
    assert not list(settings.work_dir.glob(f"{job_id}*"))

    run_job(job_id)
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.attempt) == (JobStatus.succeeded, 1), job.error
    kinds = events_of(job_id)
    assert "requeued" in kinds and "resumed" in kinds[kinds.index("requeued") :]
    assert not list(settings.work_dir.glob(f"{job_id}*"))


def test_a_transformer_jobs_planned_augmentation_is_stored_with_its_plan(tmp_path: Path) -> None:
    """A text classifier's unstated `augment.tokens` is decided with its planned schedule at
    the first claim and stored with it; the resumed attempt reads the stored share."""
    from tests.worker.kd.hf.factories import bert_dir, write_jsonl, zip_dir

    teacher_zip = zip_dir(bert_dir(tmp_path / "m", "sequence_classification"), tmp_path / "t.zip")
    texts = write_jsonl(tmp_path / "texts.jsonl", 30)
    storage = open_storage(get_settings())
    with session_scope() as session:
        tenant = get_or_create_tenant(session, f"plan-{uuid.uuid4().hex[:8]}")
        teacher, _ = create_file(session, storage, tenant.id, "teacher", _received(teacher_zip))
        dataset, _ = create_file(session, storage, tenant.id, "dataset", _received(texts))
        bare = JobSpec.model_validate({
            "teacher": {"file_id": teacher.id},
            "dataset": {"file_id": dataset.id, "max_length": 24},
            "student": {"arch": "from_teacher", "num_layers": 1},
            "training": {"budget_seconds": 0.001, "device": "cpu"},  # one planned epoch
        })  # fmt: skip
        assert bare.distillation.augment.tokens is None
        job = Job(id=new_id("job"), tenant_id=tenant.id, status=JobStatus.queued,
                  spec=bare.model_dump(mode="json"))  # fmt: skip
        session.add(job)
        job_id = job.id
    run_job(job_id)
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert job.status == JobStatus.succeeded, job.error
        stored = dict(job.spec)
    assert stored["distillation"]["augment"]["tokens"] == DEFAULT_TOKEN_SHARE
    assert stored["distillation"]["temperature"] == 1.0  # the rest of the section kept
    assert stored["training"]["epochs"] == 1
    requeue_and_run(job_id)
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert job.status == JobStatus.succeeded and job.attempt == 2
        assert job.spec == stored
