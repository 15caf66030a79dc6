"""Webhooks reach a receiver on 127.0.0.1, signed, retried after a failure, logged."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.webhooks import verify
from tests.e2e.conftest import Api, digits_spec

pytestmark = pytest.mark.e2e


class Receiver(HTTPServer):
    def __init__(self, fail_first: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fail_first = fail_first
        self.calls: list[tuple[dict[str, str], bytes, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/distillery"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 503 if len(self.server.calls) < self.server.fail_first else 204
        self.server.calls.append((dict(self.headers.items()), body, status))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(fail_first=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_job_end_is_posted_signed_and_retried(
    embedded: Api, digits: dict[str, Path], receiver: Receiver
) -> None:
    teacher = embedded.upload(digits["teacher"], "teacher")
    dataset = embedded.upload(digits["dataset"], "dataset")
    spec = digits_spec(teacher["id"], dataset["id"], epochs=1) | {"webhook_url": receiver.url}
    job = embedded.wait(embedded.submit(spec)["id"])
    assert job["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while len(receiver.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [status for _, _, status in receiver.calls] == [503, 204]
    secret = embedded.get("/v1/webhook_secret").json()["secret"]
    (first_headers, _, _), (headers, body, _) = receiver.calls
    assert verify(secret, headers["Distillery-Signature"], body)
    assert headers["Distillery-Event"] == "job.succeeded"
    assert headers["Distillery-Delivery"] == first_headers["Distillery-Delivery"]
    assert json.loads(body)["id"] == job["id"] and json.loads(body)["status"] == "succeeded"
    while time.monotonic() < deadline:
        events = embedded.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        hooks = [e for e in events if e["kind"] == "webhook"]
        if len(hooks) == 2:
            break
        time.sleep(0.2)
    assert [h["data"]["ok"] for h in hooks] == [False, True]
    assert "retrying" in hooks[0]["message"] and "delivered" in hooks[1]["message"]


def test_cancelling_a_queued_job_is_announced_too(
    embedded: Api, receiver: Receiver, digits: dict[str, Path]
) -> None:
    receiver.fail_first = 0
    teacher = embedded.upload(digits["teacher"], "teacher")
    dataset = embedded.upload(digits["dataset"], "dataset")
    blocker = embedded.submit(digits_spec(teacher["id"], dataset["id"], epochs=200))
    spec = digits_spec(teacher["id"], dataset["id"]) | {"webhook_url": receiver.url}
    queued = embedded.submit(spec)
    with embedded.client as client:
        assert client.post(f"/v1/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
        client.post(f"/v1/jobs/{blocker['id']}/cancel")
    deadline = time.monotonic() + 60
    while not receiver.calls and time.monotonic() < deadline:
        time.sleep(0.2)
    headers, body, _ = receiver.calls[0]
    assert headers["Distillery-Event"] == "job.cancelled"
    assert json.loads(body)["id"] == queued["id"]
