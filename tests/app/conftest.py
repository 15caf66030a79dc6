from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import app
from app.migrate import upgrade_head
from tests.factories import auth, new_key, small_dataset


@pytest.fixture(scope="session", autouse=True)
def _migrated() -> None:
    upgrade_head()


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def headers() -> dict[str, str]:
    return auth(new_key())


@pytest.fixture
def other_headers() -> dict[str, str]:
    return auth(new_key())


def upload(
    client: TestClient,
    headers: dict[str, str],
    purpose: str,
    content: bytes,
    filename: str = "upload.bin",
) -> dict:
    response = client.post(
        "/v1/files",
        headers=headers,
        data={"purpose": purpose},
        files={"file": (filename, content, "application/octet-stream")},
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def job_files(client: TestClient, headers: dict[str, str]) -> dict[str, str]:
    teacher = upload(client, headers, "teacher", b"PK\x03\x04 not really torchscript", "t.pt")
    dataset = upload(client, headers, "dataset", small_dataset(), "d.npz")
    return {"teacher": teacher["id"], "dataset": dataset["id"]}


def spec(files: dict[str, str], **overrides: object) -> dict:
    body: dict = {
        "teacher": {"file_id": files["teacher"]},
        "student": {"arch": "mlp", "hidden": [16]},
        "dataset": {"file_id": files["dataset"]},
        "training": {"epochs": 1},
    }
    body.update(overrides)
    return body
