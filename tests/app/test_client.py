"""The Python client's own behaviour (retries, errors, streams, checksums) against
scripted HTTP answers; the end-to-end tests drive it against the real server."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.client import Client, DistilleryError

JOB = {
    "id": "job_1",
    "object": "job",
    "status": "queued",
    "progress": 0.0,
    "spec": {},
    "error": None,
    "result": None,
    "attempt": 0,
    "created_at": "2026-01-01T00:00:00Z",
    "started_at": None,
    "finished_at": None,
}


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client("http://test", "dk_key", backoff=0.0, transport=httpx.MockTransport(handler))


def test_retries_5xx_and_429_then_succeeds() -> None:
    answers = [
        httpx.Response(503),
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(200, json=JOB),
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    assert client_for(handler).get("job_1").id == "job_1"
    assert len(seen) == 3
    assert seen[0].headers["authorization"] == "Bearer dk_key"


def test_retries_connection_errors() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=JOB)

    assert client_for(handler).get("job_1").status == "queued"
    assert calls["n"] == 3


def test_4xx_raises_with_code_and_message_and_is_not_retried() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "No job."}})

    with pytest.raises(DistilleryError) as info:
        client_for(handler).get("job_x")
    assert (info.value.status, info.value.code, info.value.message) == (404, "not_found", "No job.")
    assert calls["n"] == 1


def test_submit_sends_one_idempotency_key_across_retries() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        return httpx.Response(502) if len(keys) == 1 else httpx.Response(201, json=JOB)

    client_for(handler).submit({"teacher": {}})
    assert len(keys) == 2 and keys[0] == keys[1]


def test_events_parse_the_stream_and_stop_at_the_end() -> None:
    body = (
        'id: 1\nevent: queued\ndata: {"id": 1, "object": "event", "kind": "queued", '
        '"message": "q", "data": {}, "ts": "2026-01-01T00:00:00Z"}\n\n'
        'event: end\ndata: {"status": "succeeded"}\n\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept"] == "text/event-stream"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    events = list(client_for(handler).events("job_1"))
    assert [(e.id, e.kind) for e in events] == [(1, "queued")]


def test_download_checks_the_sha256(tmp_path: Path) -> None:
    content = b"student bytes"

    def handler(request: httpx.Request) -> httpx.Response:
        digest = hashlib.sha256(content).hexdigest()
        if request.url.path.endswith("bad.pt"):
            digest = "0" * 64
        return httpx.Response(200, content=content, headers={"x-content-sha256": digest})

    client = client_for(handler)
    assert client.download("job_1", "student.pt", tmp_path).read_bytes() == content
    with pytest.raises(DistilleryError, match="corrupted"):
        client.download("job_1", "bad.pt", tmp_path)
    assert not (tmp_path / "bad.pt").exists()
    assert not list(tmp_path.glob("*.partial"))
