"""Rate limits per API key, and storage quotas per tenant."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from app.config import get_settings
from app.ratelimit import MemoryLimiter, RedisLimiter
from tests.factories import small_dataset


def test_memory_limiter_counts_per_key_per_minute() -> None:
    limiter = MemoryLimiter(limit=3)
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    retry_after = limiter.hit("a")
    assert retry_after is not None and 1 <= retry_after <= 60
    assert limiter.hit("b") is None


def test_redis_limiter_counts_across_processes() -> None:
    key = uuid.uuid4().hex
    first, second = (
        RedisLimiter("redis://127.0.0.1:6379/0", 2),
        RedisLimiter("redis://127.0.0.1:6379/0", 2),
    )
    assert first.hit(key) is None and second.hit(key) is None
    assert first.hit(key) is not None


def test_api_answers_429_with_retry_after(
    client: TestClient, headers: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = MemoryLimiter(limit=2)
    monkeypatch.setattr("app.api.deps.get_limiter", lambda: limiter)
    assert [client.get("/v1/jobs", headers=headers).status_code for _ in range(2)] == [200, 200]
    limited = client.get("/v1/jobs", headers=headers)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_upload_over_the_tenant_quota_is_refused(client: TestClient, headers: dict) -> None:
    settings = get_settings()
    quota = settings.tenant_quota_bytes
    content = small_dataset()
    settings.tenant_quota_bytes = len(content) + 10
    try:
        first = client.post(
            "/v1/files",
            headers=headers,
            data={"purpose": "dataset"},
            files={"file": ("a.npz", content)},
        )
        second = client.post(
            "/v1/files",
            headers=headers,
            data={"purpose": "dataset"},
            files={"file": ("b.npz", content)},
        )
    finally:
        settings.tenant_quota_bytes = quota
    assert first.status_code == 201
    assert second.status_code == 413
    assert second.json()["error"]["code"] == "quota_exceeded"
    assert "delete files" in second.json()["error"]["message"]


def test_artifact_names_cannot_leave_the_job(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    from tests.app.conftest import spec

    job_id = client.post("/v1/jobs", headers=headers, json=spec(job_files)).json()["id"]
    for name in ("..%2F..%2Fdistillery.db", "%2Fetc%2Fpasswd", ".%2E%2Fx"):
        response = client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=headers)
        assert response.status_code == 404, name
