"""Fencing (worker/fence.py): once the sweep has taken a job back and another worker has
claimed it, every write of the stale attempt is refused and leaves nothing behind, on
SQLite and on PostgreSQL. The take-over is the real one: a lapsed lease, the sweep, a
second claim."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.exc import DBAPIError

from app import db
from app.config import Settings, get_settings
from app.db import session_scope
from app.ids import new_id
from app.migrate import upgrade_head
from app.models import Artifact, Job, JobEvent, Metric, utcnow
from app.schemas import JobStatus
from app.services.keys import get_or_create_tenant
from app.storage import LocalStorage, S3Storage, Storage, open_storage
from tests.s3 import S3Endpoint, s3_endpoint  # noqa: F401  (the `s3` fixture)
from worker.fence import Fence
from worker.local_copies import mirrored_checkpoints
from worker.maintenance import sweep
from worker.pipeline import (
    _finish,
    _store_success,
    claim,
    fail,
    hand_back,
    heartbeat,
    record_checkpoints,
)
from worker.reporter import DatabaseReporter

SETTINGS = Settings(lease_seconds=30, max_attempts=5, requeue_after_seconds=3600)
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2"


def _point_at(url: str | None) -> None:
    if url is None:
        os.environ.pop("DISTILLERY_DATABASE_URL", None)
    else:
        os.environ["DISTILLERY_DATABASE_URL"] = url
    for cached in (get_settings, db.get_engine, db.get_sessionmaker):
        cached.cache_clear()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"], autouse=True)
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test database: the session's SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        upgrade_head()
        yield "sqlite"
        return
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    name = f"distillery_fence_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    _point_at(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    try:
        upgrade_head()
        yield "postgresql"
    finally:
        db.get_engine().dispose()
        _point_at(None)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def lapsed_job() -> str:
    """A running job of attempt 1 whose worker stopped answering two minutes ago."""
    with session_scope() as session:
        tenant = get_or_create_tenant(session, f"fence-{uuid.uuid4().hex[:8]}")
        job = Job(
            id=new_id("job"),
            tenant_id=tenant.id,
            status=JobStatus.running,
            attempt=1,
            progress=0.4,
            spec={"student": {"arch": "mlp"}},
            worker="cut-off:1",
            heartbeat_at=utcnow() - timedelta(seconds=120),
        )
        session.add(job)
        return job.id


def taken_over() -> tuple[Fence, Fence]:
    """(stale, owner): the sweep takes the lapsed job back and attempt 2 claims it."""
    job_id = lapsed_job()
    assert job_id in sweep(SETTINGS).requeued
    job = claim(job_id)
    assert job is not None and job.attempt == 2
    return Fence(job_id, 1), Fence(job_id, 2)


def snapshot(job_id: str) -> dict[str, Any]:
    """Everything a write could have changed: the job row and its rows elsewhere."""
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        row = {c.name: getattr(job, c.key) for c in Job.__table__.columns}
        row.pop("updated_at")  # bumped by any UPDATE, a refused one included (no row)
        events = session.execute(
            select(JobEvent.kind, JobEvent.message).where(JobEvent.job_id == job_id)
        ).all()
        metrics = session.execute(
            select(Metric.name, Metric.step, Metric.value).where(Metric.job_id == job_id)
        ).all()
        artifacts = session.execute(
            select(Artifact.name, Artifact.path).where(Artifact.job_id == job_id)
        ).all()
    return {"job": row, "events": events, "metrics": metrics, "artifacts": artifacts}


def test_a_stale_attempts_metrics_events_and_progress_are_refused() -> None:
    stale, owner = taken_over()
    owned = DatabaseReporter(owner, flush_seconds=3600, cancel_poll_seconds=3600)
    for step in (1, 2, 3):
        owned.metric("train_loss", 2.0, step=step, epoch=1)
    owned.progress(0.1, epoch=1, step=3)
    owned.flush()
    before = snapshot(owner.job_id)

    reporter = DatabaseReporter(stale, flush_seconds=3600, cancel_poll_seconds=3600)
    for step in range(1, 7):  # steps the owner wrote, and steps it has not reached yet
        reporter.metric("train_loss", 1.0, step=step, epoch=1)
    reporter.progress(0.9, epoch=2, step=6)
    reporter.event("epoch_end", "Epoch 2/2 (stale)")  # flushes everything at once
    assert snapshot(owner.job_id) == before
    assert stale.lost.is_set() and reporter.writes == 0
    assert stale.refused == ["6 metric point(s), 1 event(s), progress"]
    assert reporter.should_stop() and reporter.stop_reason == "lost"

    reporter.metric("train_loss", 1.0, step=7, epoch=2)  # a lost attempt writes nothing more
    reporter.flush()
    assert snapshot(owner.job_id) == before and len(stale.refused) == 1
    assert stale.dropped == {"metric point(s)": 1}
    assert before["metrics"] == [("train_loss", s, 2.0) for s in (1, 2, 3)]
    assert before["job"]["progress"] == 0.1


def test_a_stale_heartbeat_is_refused_and_marks_the_attempt_lost() -> None:
    stale, owner = taken_over()
    before = snapshot(owner.job_id)
    # The claim above was made by this very process, so the job's `worker` matches the
    # stale attempt's too: only the attempt number tells them apart.
    with heartbeat(stale, every=0.02):
        assert stale.lost.wait(timeout=30)
    assert stale.refused == ["heartbeat"]
    assert snapshot(owner.job_id) == before

    with heartbeat(owner, every=0.02):  # the owner's lease is renewed as before
        threading.Event().wait(0.1)
    assert not owner.lost.is_set()


@pytest.mark.parametrize(
    ("end", "refused"),
    [
        (lambda f: fail(f, "internal_error", "stale"), "end (failed)"),
        (lambda f: _finish(f, JobStatus.cancelled, "stale"), "end (cancelled)"),
        (lambda f: hand_back(f, "stale shutdown"), "hand-back"),
    ],
    ids=["fail", "cancel", "hand_back"],
)
def test_a_stale_end_or_hand_back_is_refused(end: Any, refused: str) -> None:
    stale, owner = taken_over()
    before = snapshot(owner.job_id)
    end(stale)
    assert stale.refused == [refused] and stale.lost.is_set()
    assert snapshot(owner.job_id) == before
    assert before["job"]["status"] == JobStatus.validating and before["job"]["attempt"] == 2


def _artifacts(tmp_path: Path, tag: str) -> dict[str, Path]:
    out = tmp_path / tag
    out.mkdir()
    (out / "student.pt").write_bytes(f"weights of {tag}".encode())
    (out / "report.json").write_text(f'{{"from": "{tag}"}}')
    return {p.name: p for p in out.iterdir()}


REPORT = {"teacher": {"accuracy": 0.9}, "student": {"accuracy": 0.8}}


def _stored(store: Storage, s3: S3Endpoint | None, job_id: str) -> list[str]:
    if isinstance(store, S3Storage):
        assert s3 is not None
        prefix = f"{store.prefix}/artifacts/{job_id}/"
        return [k.removeprefix(prefix) for k in s3.keys(store.bucket, prefix)]
    assert isinstance(store, LocalStorage)
    root = store.artifacts_root / job_id
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(params=["directory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Storage, S3Endpoint | None]:
    if request.param == "directory":
        return open_storage(Settings(data_dir=tmp_path / "store")), None
    s3: S3Endpoint = request.getfixturevalue("s3")
    return open_storage(
        Settings(data_dir=tmp_path / "store", storage_url=f"s3://{s3.new_bucket()}/p")
    ), s3


@pytest.mark.parametrize("stale_first", [False, True], ids=["owner_first", "stale_first"])
def test_a_stale_success_is_refused_and_its_objects_deleted(
    store: tuple[Storage, S3Endpoint | None], tmp_path: Path, stale_first: bool
) -> None:
    storage, s3 = store
    stale, owner = taken_over()
    if stale_first:  # the owner is still training when the stale attempt finishes
        before = snapshot(owner.job_id)
        _store_success(stale, storage, _artifacts(tmp_path, "stale"), REPORT)
        assert snapshot(owner.job_id) == before
        assert _stored(storage, s3, owner.job_id) == []
    else:  # what attempt 1 stored before it was cut off mid-upload: cleared at the end
        storage.put_artifact(
            owner.job_id, "student.pt", _artifacts(tmp_path, "cut")["student.pt"], 1
        )
    with session_scope() as session:  # the owner reaches `running`
        session.execute(update(Job).where(Job.id == owner.job_id).values(status="running"))
    _store_success(owner, storage, _artifacts(tmp_path, "owner"), REPORT)
    before = snapshot(owner.job_id)
    if not stale_first:
        _store_success(stale, storage, _artifacts(tmp_path, "stale"), REPORT)
    assert stale.refused == ["end (succeeded) and 2 artifact(s)"]
    assert snapshot(owner.job_id) == before
    assert before["job"]["status"] == JobStatus.succeeded
    assert sorted(before["artifacts"]) == [
        ("report.json", f"{owner.job_id}/2/report.json"),
        ("student.pt", f"{owner.job_id}/2/student.pt"),
    ]
    assert _stored(storage, s3, owner.job_id) == ["2/report.json", "2/student.pt"]
    assert storage.read_bytes("artifacts", f"{owner.job_id}/2/student.pt") == b"weights of owner"


def _checkpoint_keys(storage: Storage, s3: S3Endpoint | None, job_id: str) -> list[str]:
    if isinstance(storage, S3Storage):
        assert s3 is not None
        prefix = f"{storage.prefix}/checkpoints/"
        return [k.removeprefix(prefix) for k in s3.keys(storage.bucket, prefix + job_id)]
    assert isinstance(storage, LocalStorage)
    root = storage.checkpoints_root
    return sorted(
        str(p.relative_to(root))
        for p in (root / job_id).rglob("*")
        if p.is_file() and "work" not in p.parts
    )


def _recorded(job_id: str) -> dict[str, str] | None:
    with session_scope() as session:
        return session.get_one(Job, job_id).checkpoints


def _mirror(storage: Storage, fence: Fence) -> Any:
    local = storage.checkpoint_dir(fence.job_id, fence.attempt)
    return local, mirrored_checkpoints(
        storage,
        fence,
        local,
        _recorded(fence.job_id),
        lambda keys: record_checkpoints(fence, keys),
        every=3600,  # pushed when the body ends: no timing in the test
    )


def test_a_stale_checkpoint_is_never_recorded_and_is_deleted(
    store: tuple[Storage, S3Endpoint | None],
) -> None:
    storage, s3 = store
    job_id = lapsed_job()
    first = Fence(job_id, 1)
    local, mirror = _mirror(storage, first)
    with mirror:  # attempt 1, before its link went down
        (local / "checkpoint.pt").write_bytes(b"step 100 by attempt 1")
    (epoch_1,) = _recorded(job_id).values()  # type: ignore[union-attr]
    _, stale_mirror = _mirror(storage, first)
    stale_mirror.__enter__()  # attempt 1 trains on, cut off

    assert job_id in sweep(SETTINGS).requeued
    assert claim(job_id) is not None
    owner = Fence(job_id, 2)
    owned, owner_mirror = _mirror(storage, owner)
    with owner_mirror:
        assert (owned / "checkpoint.pt").read_bytes() == b"step 100 by attempt 1"
        # The cut-off attempt writes its next checkpoint, and pushes it when it stops.
        (local / "checkpoint.pt").write_bytes(b"step 200 by attempt 1 (stale)")
        stale_mirror.__exit__(None, None, None)
        assert first.refused == ["checkpoint (checkpoint.pt)"] and first.lost.is_set()
        assert _recorded(job_id) == {"checkpoint.pt": epoch_1}
        assert _checkpoint_keys(storage, s3, job_id) == [epoch_1]  # the stale upload is gone
        (owned / "checkpoint.pt").write_bytes(b"step 200 by attempt 2")
    (epoch_2,) = _recorded(job_id).values()  # type: ignore[union-attr]
    assert epoch_2.startswith(f"{job_id}/2/")
    assert _checkpoint_keys(storage, s3, job_id) == [epoch_2]
    resumed = storage.checkpoint_dir(job_id, 3) / "checkpoint.pt"
    storage.pull_checkpoint(epoch_2, resumed)
    assert resumed.read_bytes() == b"step 200 by attempt 2"


def test_on_postgresql_a_held_fence_makes_the_take_over_wait(database: str) -> None:
    """The fence's UPDATE locks the job's row until its transaction ends: a sweep cannot
    requeue the job between the check and the writes it guards."""
    if database != "postgresql":
        pytest.skip("row locks: PostgreSQL (SQLite has one writer at a time anyway)")
    job_id = lapsed_job()
    fence = Fence(job_id, 1)
    sweeper = create_engine(db.get_engine().url)
    try:
        with db.get_engine().begin() as writer:
            assert fence.hold(writer, progress=0.5)
            with sweeper.connect() as other:
                other.execute(text("SET lock_timeout = '200ms'"))
                with pytest.raises(DBAPIError, match="lock timeout"):
                    other.execute(
                        update(Job).where(Job.id == job_id).values(status=JobStatus.queued)
                    )
        with sweeper.begin() as other:  # once the fenced write committed, it goes through
            other.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.queued))
    finally:
        sweeper.dispose()
    assert snapshot(job_id)["job"]["progress"] == 0.5
