"""Issue 15's resource, fault and security findings, from the API's side."""

from __future__ import annotations

import io
import socket
import threading
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.auth import authenticate
from app.config import Settings
from app.db import session_scope
from app.ratelimit import MemoryLimiter, RedisLimiter, StreamSlots
from app.schemas import JobCreate
from app.webhooks import deliver
from tests.app.conftest import spec
from tests.factories import new_key, npz_bytes
from tests.worker.test_npz_headers import npy_header


def _post_file(client: TestClient, headers: dict[str, str], content: bytes) -> dict:
    response = client.post(
        "/v1/files",
        headers=headers,
        data={"purpose": "dataset"},
        files={"file": ("d.npz", content, "application/octet-stream")},
    )
    assert response.status_code == 400, response.text
    return response.json()["error"]


def test_npz_with_a_void_label_array_is_refused_at_upload(
    client: TestClient, headers: dict[str, str]
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", npy_header((4, 2), "<f4") + bytes(32))
        archive.writestr("y.npy", npy_header((4,), "|V16") + bytes(64))
    error = _post_file(client, headers, buffer.getvalue())
    assert "'y'" in error["message"] and "|V16" in error["message"], error


def test_npz_with_a_truncated_array_is_refused_as_truncated(
    client: TestClient, headers: dict[str, str]
) -> None:
    whole = npz_bytes(x=np.zeros((10, 4), np.float32))
    cut = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(whole)) as source, zipfile.ZipFile(cut, "w") as archive:
        archive.writestr("x.npy", source.read("x.npy")[:-40])
    error = _post_file(client, headers, cut.getvalue())
    assert "truncated" in error["message"], error
    half = _post_file(client, headers, whole[: len(whole) // 2])
    assert "truncated" in half["message"], half


@pytest.mark.parametrize(
    "student",
    [
        {"arch": "mlp", "hidden": [65536] * 32},
        {"arch": "cnn", "channels": [4096] * 4, "kernel_size": 31, "layout": "2d"},
    ],
    ids=["mlp", "cnn"],
)
def test_an_oversized_student_is_refused_at_submit(
    client: TestClient, headers: dict[str, str], job_files: dict[str, str], student: dict
) -> None:
    response = client.post("/v1/jobs", headers=headers, json=spec(job_files, student=student))
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "DISTILLERY_MAX_STUDENT_PARAMS" in message and "parameters" in message, message


def _unbounded_integers(node: object, path: str = "") -> list[str]:
    """Paths in a JSON schema where an integer or number has no maximum."""
    found: list[str] = []
    if isinstance(node, dict):
        if (
            node.get("type") in ("integer", "number")
            and not {"maximum", "exclusiveMaximum"} & node.keys()
        ):
            found.append(path)
        for key, value in node.items():
            found += _unbounded_integers(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _unbounded_integers(value, f"{path}/{index}")
    return found


def test_every_number_in_the_job_spec_is_bounded() -> None:
    assert _unbounded_integers(JobCreate.model_json_schema()) == []


def test_a_400_digit_runtime_is_a_422_not_an_internal_error(
    client: TestClient, headers: dict[str, str], job_files: dict[str, str]
) -> None:
    body = spec(job_files, training={"epochs": 1, "max_runtime_seconds": int("9" * 400)})
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 422, response.text
    assert "max_runtime_seconds" in response.json()["error"]["message"]


def test_a_multipart_body_without_its_closing_boundary_is_refused(
    client: TestClient, headers: dict[str, str]
) -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\ndataset\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="d.npz"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + npz_bytes(x=np.zeros((4, 2)))
    )
    response = client.post(
        "/v1/files",
        headers={**headers, "Content-Type": "multipart/form-data; boundary=XyZ"},
        content=body,
    )
    assert response.status_code == 400, response.text
    assert "closing boundary" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/login", "/logout"])
@pytest.mark.parametrize(
    "cross_site",
    [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}],
    ids=["origin", "sec-fetch-site"],
)
def test_cross_site_sign_in_posts_are_refused(
    client: TestClient, path: str, cross_site: dict[str, str]
) -> None:
    response = client.post(
        path, data={"key": new_key()}, headers=cross_site, follow_redirects=False
    )
    assert response.status_code == 403, response.text
    assert (
        "another site" in response.json()["error"]["message"]
        or "not from this" in (response.json()["error"]["message"])
    )
    assert "set-cookie" not in response.headers


def test_same_origin_sign_in_still_works(client: TestClient) -> None:
    response = client.post(
        "/login",
        data={"key": new_key()},
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    client.cookies.clear()  # the client is shared: don't leave it signed in
    assert response.status_code == 303, response.text


def test_a_webhook_connects_to_the_address_that_was_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the name answers a public address when checked and 127.0.0.1 when
    asked again. The delivery must not reach the receiver on 127.0.0.1."""
    hits: list[str] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["8.8.8.8", "127.0.0.1", "127.0.0.1"])

    def rebinding(host: str, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real_getaddrinfo(host, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    settings = Settings(webhook_timeout_seconds=1.0)
    try:
        outcome = deliver(
            f"http://rebind.test:{port}/hook", "whsec_x", "job.succeeded", "d1", b"{}", settings
        )
    finally:
        server.shutdown()
    assert hits == [], "the webhook reached the address a second DNS answer gave"
    assert not outcome.ok


def test_unknown_keys_are_rate_limited_per_client_address(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = MemoryLimiter(limit=3)
    monkeypatch.setattr("app.api.deps.get_limiter", lambda: limiter)
    codes = [
        client.get("/v1/jobs", headers={"Authorization": f"Bearer bogus-{n}"}).status_code
        for n in range(5)
    ]
    assert codes == [401, 401, 401, 429, 429]


def test_unknown_keys_leave_no_redis_counter_each(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = RedisLimiter("redis://127.0.0.1:6379/0", 1000)
    monkeypatch.setattr("app.api.deps.get_limiter", lambda: limiter)

    def counters() -> int:
        return len(list(limiter.client.scan_iter("distillery:ratelimit:*", count=1000)))

    before = counters()
    for n in range(30):
        bogus = {"Authorization": f"Bearer bogus-{uuid.uuid4().hex}-{n}"}
        assert client.get("/v1/jobs", headers=bogus).status_code == 401
    assert counters() - before <= 2  # one per address (and window), not one per key


def test_event_streams_per_key_are_capped(
    client: TestClient,
    headers: dict[str, str],
    job_files: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = client.post("/v1/jobs", headers=headers, json=spec(job_files)).json()
    with session_scope() as session:
        principal = authenticate(session, headers["Authorization"].removeprefix("Bearer "))
    assert principal is not None
    slots = StreamSlots(limit=2)
    assert slots.acquire(principal.id) and slots.acquire(principal.id)  # two streams open
    monkeypatch.setattr("app.api.jobs.get_stream_slots", lambda: slots)
    response = client.get(
        f"/v1/jobs/{job['id']}/events", headers={**headers, "Accept": "text/event-stream"}
    )
    assert response.status_code == 429, response.text
    assert "event streams open" in response.json()["error"]["message"]
