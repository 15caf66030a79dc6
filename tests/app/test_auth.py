from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from app.db import session_scope
from app.services.keys import revoke_key
from tests.factories import auth, new_key


def test_missing_key_is_401_with_a_hint(client: TestClient) -> None:
    response = client.get("/v1/jobs")
    assert response.status_code == 401
    body = response.json()["error"]
    assert body["code"] == "unauthorized"
    assert "Authorization: Bearer" in body["message"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_key_is_401(client: TestClient) -> None:
    response = client.get("/v1/files", headers=auth("dk_not-a-real-key"))
    assert response.status_code == 401
    assert "unknown or revoked" in response.json()["error"]["message"]


def test_revoked_key_stops_working(client: TestClient) -> None:
    key = new_key()
    assert client.get("/v1/files", headers=auth(key)).status_code == 200
    with session_scope() as session:
        assert revoke_key(session, key) == 1
    assert client.get("/v1/files", headers=auth(key)).status_code == 401


def test_keys_are_stored_hashed() -> None:
    from sqlalchemy import select

    from app.models import ApiKey
    from app.security import hash_key

    key = new_key()
    with session_scope() as session:
        stored = session.scalars(select(ApiKey.key_hash)).all()
    assert key not in stored
    assert hash_key(key) in stored


def test_health_endpoints_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_unknown_route_uses_the_error_shape(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_dashboard_cookie_reads_but_needs_the_csrf_header_to_change(client: TestClient) -> None:
    from app.api.deps import CSRF_HEADER, SESSION_COOKIE

    key = new_key()
    cookies = {SESSION_COOKIE: key}
    assert client.get("/v1/jobs", cookies=cookies).status_code == 200
    job_id = "job_doesnotexist"
    refused = client.post(f"/v1/jobs/{job_id}/cancel", cookies=cookies)
    assert refused.status_code == 401
    allowed = client.post(f"/v1/jobs/{job_id}/cancel", cookies=cookies, headers={CSRF_HEADER: "1"})
    assert allowed.status_code == 404
    client.cookies.clear()


def test_a_key_revoked_by_another_process_stops_working_when_the_cache_expires(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`distillery keys revoke` runs in another process: this server keeps the key's
    tenant for auth_cache_seconds, then asks the database again."""
    from sqlalchemy import update

    from app.auth import get_key_cache
    from app.models import ApiKey, utcnow
    from app.security import hash_key

    key = new_key()
    assert client.get("/v1/files", headers=auth(key)).status_code == 200
    with session_scope() as session:  # as the CLI would: no word to this process's cache
        session.execute(
            update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(revoked_at=utcnow())
        )
    assert client.get("/v1/files", headers=auth(key)).status_code == 200  # cached
    cache = get_key_cache()
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + cache.ttl + 0.01)
    assert client.get("/v1/files", headers=auth(key)).status_code == 401


def test_key_cache_keeps_found_keys_only_and_bounds_its_size() -> None:
    from app.auth import KeyCache, Principal

    cache = KeyCache(ttl=60, max_entries=2)
    for n in range(3):
        cache.put(f"h{n}", Principal(id=f"ten_{n}", name=f"t{n}"))
    assert cache.get("h0") is None  # oldest out
    assert cache.get("h2") == Principal(id="ten_2", name="t2")
    off = KeyCache(ttl=0)
    off.put("h", Principal(id="ten", name="t"))
    assert off.get("h") is None
