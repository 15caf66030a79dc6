"""Dashboard tests: a fresh browser-like client per test (its own cookie jar) on the app
from tests/app, and helpers that sign in and make jobs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.deps import SESSION_COOKIE
from app.db import session_scope
from app.main import app
from app.migrate import upgrade_head
from app.models import Job
from app.schemas import JobStatus
from tests.app.conftest import spec, upload
from tests.factories import auth, new_key, small_dataset


@pytest.fixture(scope="session", autouse=True)
def _migrated() -> None:
    upgrade_head()


@pytest.fixture
def web() -> Iterator[TestClient]:
    """A client that does not follow redirects, so tests see where a page sends them."""
    with TestClient(app, follow_redirects=False) as client:
        yield client


@pytest.fixture
def key() -> str:
    return new_key()


def sign_in(client: TestClient, key: str) -> None:
    response = client.post("/login", data={"key": key})
    assert response.status_code == 303, response.text
    assert client.cookies.get(SESSION_COOKIE) == key


def submit_job(client: TestClient, key: str) -> dict[str, Any]:
    """A queued job for the key's tenant, made through the REST API."""
    headers = auth(key)
    teacher = upload(client, headers, "teacher", b"PK\x03\x04 not really torchscript", "t.pt")
    dataset = upload(client, headers, "dataset", small_dataset(), "d.npz")
    files = {"teacher": teacher["id"], "dataset": dataset["id"]}
    response = client.post("/v1/jobs", headers=headers, json=spec(files))
    assert response.status_code == 201, response.text
    return dict(response.json())


def mark_succeeded(job_id: str, result: dict[str, Any]) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = JobStatus.succeeded
        job.progress = 1.0
        job.result = result
