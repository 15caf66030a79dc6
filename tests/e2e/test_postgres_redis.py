"""The production shape on this machine: PostgreSQL and Redis on 127.0.0.1, separate
`distillery migrate`, `distillery api` and `distillery worker` processes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Api,
    Processes,
    check_distilled,
    clean_env,
    digits_spec,
    free_port,
    fresh_database,
    wait_ready,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database("distillery_test") as url:
        yield url


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("production")
    env = clean_env(
        DISTILLERY_DATABASE_URL=database,
        DISTILLERY_BROKER_URL=REDIS_URL,
        DISTILLERY_DATA_DIR=str(root / "data"),
        DISTILLERY_QUEUE=f"distillery-test-{uuid.uuid4().hex[:8]}",
    )
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True, timeout=120)
    key = (
        subprocess.run(
            [*cli, "keys", "create", "--tenant", "prod-test"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    processes = Processes(root)
    port = free_port()
    processes.start("api", [*cli, "api", "--port", str(port)], env)
    processes.start("worker", [*cli, "worker"], env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, processes)
        yield Api(base, key, processes)
    finally:
        processes.stop()


def test_distils_digits_on_postgres_and_redis(
    production: Api, digits: dict[str, Path], tmp_path: Path
) -> None:
    teacher = production.upload(digits["teacher"], "teacher")
    dataset = production.upload(digits["dataset"], "dataset")
    job = production.submit(digits_spec(teacher["id"], dataset["id"]))
    finished = production.wait(job["id"])
    check_distilled(production, finished, digits["dataset"], tmp_path / "student.pt")


def test_migrate_is_idempotent(database: str) -> None:
    env = clean_env(DISTILLERY_DATABASE_URL=database)
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_readyz_reports_a_broker_that_is_down(database: str) -> None:
    env = clean_env(
        DISTILLERY_DATABASE_URL=database,
        DISTILLERY_BROKER_URL="redis://127.0.0.1:1/0",
        DISTILLERY_BROKER_CHECK_TIMEOUT_SECONDS="0.5",
    )
    code = (
        "from fastapi.testclient import TestClient; from app.main import app; "
        "r = TestClient(app).get('/readyz'); print(r.status_code, r.json()['checks'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "503 {'database': 'ok', 'broker': 'unavailable'}", out.stderr
