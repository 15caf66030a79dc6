"""The API on an object store (moto's real S3 endpoint): uploads land in the bucket,
downloads redirect to presigned URLs or stream with Range, and the Python client follows
a redirect without showing the store its API key."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api import deps
from app.auth import lookup
from app.client import Client
from app.config import Settings, get_settings
from app.db import session_scope
from app.ids import new_id
from app.main import app
from app.models import Artifact, Job
from app.security import hash_key
from app.storage import S3Storage, open_storage
from tests.app.conftest import upload
from tests.factories import new_key, small_dataset
from tests.s3 import S3Endpoint, s3_endpoint  # noqa: F401  (the `s3` fixture)


def use_store(s3: S3Endpoint, **values: object) -> Iterator[S3Storage]:
    """Point the app's settings and storage dependencies at a fresh bucket."""
    bucket = s3.new_bucket()
    settings = get_settings().model_copy(update={"storage_url": f"s3://{bucket}/data", **values})
    store = open_storage(settings)
    assert isinstance(store, S3Storage)

    async def the_settings() -> Settings:
        return settings

    async def the_store() -> S3Storage:
        return store

    app.dependency_overrides[deps.settings] = the_settings
    app.dependency_overrides[deps.get_storage] = the_store
    try:
        yield store
    finally:
        app.dependency_overrides.clear()


@pytest.fixture
def store(s3: S3Endpoint) -> Iterator[S3Storage]:
    yield from use_store(s3)


@pytest.fixture
def streaming_store(s3: S3Endpoint) -> Iterator[S3Storage]:
    yield from use_store(s3, downloads="stream")


def test_an_upload_lands_in_the_bucket_and_downloads_by_redirect(
    client: TestClient, headers: dict[str, str], store: S3Storage, s3: S3Endpoint
) -> None:
    data = small_dataset()
    file = upload(client, headers, "dataset", data, "d.npz")
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert s3.keys(store.bucket) == [f"data/files/{file['id'][-2:]}/{file['id']}"]
    assert not list(get_settings().files_dir.glob(f"*/{file['id']}"))  # nothing on local disk

    answer = client.get(f"/v1/files/{file['id']}/content", headers=headers, follow_redirects=False)
    assert answer.status_code == 307
    location = answer.headers["location"]
    assert location.startswith(s3.endpoint) and "X-Amz-Expires=300" in location
    fetched = httpx.get(location)
    assert fetched.status_code == 200 and fetched.content == data


def test_a_deleted_file_leaves_the_bucket(
    client: TestClient, headers: dict[str, str], store: S3Storage, s3: S3Endpoint
) -> None:
    file = upload(client, headers, "dataset", small_dataset(), "d.npz")
    assert client.delete(f"/v1/files/{file['id']}", headers=headers).status_code == 200
    assert s3.keys(store.bucket) == []


def test_streamed_downloads_from_the_bucket_answer_ranges(
    client: TestClient, headers: dict[str, str], streaming_store: S3Storage
) -> None:
    data = small_dataset(samples=400)
    file = upload(client, headers, "dataset", data, "d.npz")
    url = f"/v1/files/{file['id']}/content"
    whole = client.get(url, headers=headers)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["x-content-sha256"] == file["sha256"]
    part = client.get(url, headers={**headers, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    beyond = client.get(url, headers={**headers, "Range": f"bytes={len(data) + 10}-"})
    assert beyond.status_code == 416 and beyond.json()["error"]["code"] == "range_not_satisfiable"


class Routed(httpx.BaseTransport):
    """Requests to the API go to the app in-process; all others (the store) over the
    network, each recorded as sent."""

    def __init__(self, api: httpx.BaseTransport) -> None:
        self.api = api
        self.network = httpx.HTTPTransport()
        self.elsewhere: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "testserver":
            answer = self.api.handle_request(request)
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.read())
        self.elsewhere.append(request)
        return self.network.handle_request(request)


def test_the_client_follows_a_redirect_without_the_api_key(
    client: TestClient, store: S3Storage, tmp_path: Path
) -> None:
    key = new_key()
    data = os.urandom(300_000)
    job_id = _job_with_artifact(key, store, "student.pt", data, tmp_path)
    transport = Routed(client._transport)
    with Client("http://testserver", key, transport=transport) as distillery:
        saved = distillery.download(job_id, "student.pt", tmp_path / "student.pt")
    assert saved.read_bytes() == data
    [fetch] = transport.elsewhere
    assert "X-Amz-Expires" in str(fetch.url)
    assert "authorization" not in fetch.headers and key not in str(fetch.headers)


def _job_with_artifact(key: str, store: S3Storage, name: str, data: bytes, tmp: Path) -> str:
    source = tmp / name
    source.write_bytes(data)
    with session_scope() as session:
        principal = lookup(session, hash_key(key))
        assert principal is not None
        job = Job(id=new_id("job"), tenant_id=principal.id, status="succeeded", spec={})
        session.add(job)
        session.flush()
        relative, size, sha256 = store.put_artifact(job.id, name, source)
        session.add(Artifact(job_id=job.id, name=name, bytes=size, sha256=sha256, path=relative))
        return job.id
