"""GET /v1/jobs/{id} on PostgreSQL answers the same through the asyncpg read pool as
through SQLAlchemy (DISTILLERY_READ_POOL_SIZE=0): two `distillery api` processes on one
database, the same requests, the same status, headers and bytes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert

from app.db import make_engine
from app.models import Job
from tests.e2e.conftest import Processes, clean_env, free_port, fresh_database, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

CLI = [sys.executable, "-m", "app.cli"]


def _key(env: dict[str, str], tenant: str) -> str:
    done = subprocess.run(
        [*CLI, "keys", "create", "--tenant", tenant],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("pg-reads")
    with fresh_database("distillery_reads") as url:
        env = clean_env(DISTILLERY_DATABASE_URL=url, DISTILLERY_DATA_DIR=str(root / "data"))
        subprocess.run([*CLI, "migrate"], env=env, check=True, capture_output=True, timeout=120)
        ours, theirs = _key(env, "reads-ours"), _key(env, "reads-theirs")
        engine = make_engine(url)
        with engine.begin() as connection:
            tenant_id = connection.exec_driver_sql(
                "SELECT id FROM tenants WHERE name = 'reads-ours'"
            ).scalar_one()
            moment = datetime(2026, 11, 29, 12, 0, 0, 250000)
            connection.execute(
                insert(Job),
                [
                    {
                        "id": "job_pgreads_1",
                        "tenant_id": tenant_id,
                        "status": "failed",
                        "spec": {"student": {"arch": "mlp", "hidden": [8]}},
                        "progress": 0.5,
                        "error": {"code": "invalid_teacher", "message": "Not TorchScript."},
                        "attempt": 1,
                        "created_at": moment,
                        "enqueued_at": moment,
                        "started_at": moment,
                        "finished_at": moment,
                        "updated_at": moment,
                    }
                ],
            )
        engine.dispose()
        processes = Processes(Path(root))
        bases = {}
        try:
            for name, size in (("asyncpg", "4"), ("sqlalchemy", "0")):
                port = free_port()
                processes.start(
                    f"api-{name}",
                    [*CLI, "api", "--port", str(port)],
                    {**env, "DISTILLERY_READ_POOL_SIZE": size},
                )
                bases[name] = f"http://127.0.0.1:{port}"
            for base in bases.values():
                wait_ready(base, processes)
            yield {"bases": bases, "ours": ours, "theirs": theirs, "url": url}
        finally:
            processes.stop()


@pytest.mark.parametrize(
    ("who", "job_id", "status"),
    [
        ("ours", "job_pgreads_1", 200),
        ("theirs", "job_pgreads_1", 404),
        ("ours", "job_nope", 404),
        ("bogus", "job_pgreads_1", 401),
        (None, "job_pgreads_1", 401),
    ],
)
def test_asyncpg_and_sqlalchemy_answer_alike(
    apis: dict[str, object], who: str | None, job_id: str, status: int
) -> None:
    keys = {"ours": apis["ours"], "theirs": apis["theirs"], "bogus": "dk_not_a_key"}
    headers = {"Authorization": f"Bearer {keys[who]}"} if who else {}
    bases = apis["bases"]
    assert isinstance(bases, dict)
    answers = []
    for _ in range(2):  # the second time from the key cache
        for base in bases.values():
            response = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=30)
            answers.append(
                (response.status_code, response.headers.get("content-type"), response.content)
            )
    assert answers[0][0] == status
    assert all(answer == answers[0] for answer in answers), answers
    if status == 200:
        body = httpx.get(f"{bases['asyncpg']}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        assert body["error"] == {"code": "invalid_teacher", "message": "Not TorchScript."}
        assert body["created_at"] == "2026-11-29T12:00:00.250000Z"
        engine = make_engine(str(apis["url"]))
        with engine.connect() as connection:  # the asyncpg pool did answer
            readers = connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = 'distillery-api-reads'"
            ).scalar_one()
        engine.dispose()
        assert readers == 4
