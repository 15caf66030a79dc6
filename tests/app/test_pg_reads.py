"""The asyncpg read path (app/db.py read pool, services.jobs.public_job_pg) against the
SQLAlchemy one on a real PostgreSQL: the same job, byte for byte, and the same 404s."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from app.api.responses import to_json
from app.db import _create_read_pool, asyncpg_connect_args, make_engine, on_read_connection
from app.errors import NotFound
from app.models import Base, Job, Tenant
from app.services.jobs import public_job, public_job_pg

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2"


def test_connect_args_from_a_sqlalchemy_url() -> None:
    args = asyncpg_connect_args(
        "postgresql+psycopg://u:p%40ss@db.example:6543/app?sslmode=require&connect_timeout=7"
        "&application_name=x"
    )
    assert args == {"dsn": "postgresql://u:p%40ss@db.example:6543/app?sslmode=require",
                    "timeout": 7.0}  # fmt: skip


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    name = f"distillery_reads_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def engine(database: str) -> Iterator[Engine]:
    engine = make_engine(database)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _job(job_id: str, tenant_id: str, **values: Any) -> dict[str, Any]:
    created = datetime(2026, 11, 29, 12, 0, 0, 123456)  # naive UTC, as the models store it
    return {
        "id": job_id,
        "tenant_id": tenant_id,
        "status": "queued",
        "spec": {"student": {"arch": "mlp", "hidden": [16]}, "training": {"epochs": 1}},
        "progress": 0.0,
        "attempt": 0,
        "created_at": created,
        "enqueued_at": created,
        "updated_at": created,
        **values,
    }


@pytest.fixture(scope="module")
def seeded(engine: Engine) -> dict[str, Any]:
    """Two tenants; jobs of every shape the API shows, all the first tenant's."""
    ours, theirs = f"ten_{uuid.uuid4().hex[:12]}", f"ten_{uuid.uuid4().hex[:12]}"
    started = datetime(2026, 11, 29, 12, 0, 1)
    jobs = [
        _job("job_queued", ours),
        _job(
            "job_succeeded",
            ours,
            status="succeeded",
            progress=1.0,
            attempt=1,
            started_at=started,
            finished_at=started + timedelta(seconds=30),
            result={"student_accuracy": 0.98, "kd_gain": None, "artifacts": ["report.json"]},
            webhook_url="https://hooks.example/done",
        ),
        _job(
            "job_failed",
            ours,
            status="failed",
            progress=0.25,
            attempt=3,
            started_at=started,
            finished_at=started + timedelta(seconds=5),
            error={"code": "worker_lost", "message": "The worker stopped answering ñ ✓."},
        ),
        _job("job_search", ours, kind="search", status="running", started_at=started),
        _job("job_trial", ours, kind="trial", parent_id="job_search", trial_number=2),
    ]
    with Session(engine) as session:
        session.add_all([Tenant(id=ours, name=ours), Tenant(id=theirs, name=theirs)])
        session.flush()
        session.execute(insert(Job), jobs)
        session.commit()
    return {"ours": ours, "theirs": theirs, "jobs": [job["id"] for job in jobs]}


def _sqlalchemy(engine: Engine, tenant_id: str, job_id: str) -> bytes:
    with Session(engine) as session:
        return to_json(public_job(session, tenant_id, job_id))


async def _asyncpg(database: str, fn: Any, *args: Any, size: int = 2) -> Any:
    pool = await _create_read_pool(database, size)
    try:
        return await fn(pool, *args)
    finally:
        await pool.close()


def _fast(database: str, tenant_id: str, job_id: str) -> bytes:
    async def read(pool: asyncpg.Pool) -> bytes:
        return to_json(await on_read_connection(pool, public_job_pg, tenant_id, job_id))

    return bytes(asyncio.run(_asyncpg(database, read)))


def test_both_paths_return_the_same_job(
    database: str, engine: Engine, seeded: dict[str, Any]
) -> None:
    for job_id in seeded["jobs"]:
        expected = _sqlalchemy(engine, seeded["ours"], job_id)
        assert _fast(database, seeded["ours"], job_id) == expected
    assert b'"error":{"code":"worker_lost"' in _sqlalchemy(engine, seeded["ours"], "job_failed")


@pytest.mark.parametrize("case", ["other tenant", "unknown id"])
def test_both_paths_refuse_the_same_way(
    database: str, engine: Engine, seeded: dict[str, Any], case: str
) -> None:
    tenant, job_id = (
        (seeded["theirs"], "job_succeeded") if case == "other tenant" else (seeded["ours"], "job_x")
    )
    with pytest.raises(NotFound) as slow:
        _sqlalchemy(engine, tenant, job_id)
    with pytest.raises(NotFound) as fast:
        _fast(database, tenant, job_id)
    assert (
        fast.value.body()
        == slow.value.body()
        == {"error": {"code": "not_found", "message": f"No job {job_id!r}."}}
    )


def test_a_connection_the_server_dropped_is_replaced(database: str, seeded: dict[str, Any]) -> None:
    """What pool_pre_ping does for SQLAlchemy: a pooled connection killed by the server (a
    restart, an idle timeout) costs a retry on a new one, not an error."""

    async def read_twice(pool: asyncpg.Pool) -> tuple[int, int, str]:
        first = await pool.fetchval("SELECT pg_backend_pid()")
        admin = await asyncpg.connect(**asyncpg_connect_args(database))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)
        job = await on_read_connection(pool, public_job_pg, seeded["ours"], "job_queued")
        second = await pool.fetchval("SELECT pg_backend_pid()")
        return first, second, job.id

    first, second, job_id = asyncio.run(_asyncpg(database, read_twice, size=1))
    assert job_id == "job_queued" and second != first


def test_the_read_pool_cannot_write(database: str, seeded: dict[str, Any]) -> None:
    async def write(pool: asyncpg.Pool) -> None:
        await pool.execute("UPDATE jobs SET progress = 0.5 WHERE id = 'job_queued'")

    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        asyncio.run(_asyncpg(database, write))
