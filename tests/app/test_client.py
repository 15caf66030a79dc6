"""The Python client's own behaviour (retries, errors, streams, checksums) against
scripted HTTP answers; the end-to-end tests drive it against the real server."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.client import DOWNLOAD_MARKER, Client, DirectoryInUse, DistilleryError, load_spec_file

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


def artifact_server(jobs: dict[str, dict[str, bytes]]) -> Callable[[httpx.Request], httpx.Response]:
    """Answers the artifact list and downloads of the given jobs' files."""

    def handler(request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")  # v1 jobs JOB artifacts [NAME]
        files = jobs[parts[2]]
        if len(parts) == 4:
            listed = [
                {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                 "created_at": "2026-01-01T00:00:00Z"}
                for name, data in files.items()
            ]  # fmt: skip
            return httpx.Response(200, json={"object": "list", "data": listed})
        data = files[parts[4]]
        sha = hashlib.sha256(data).hexdigest()
        return httpx.Response(200, content=data, headers={"x-content-sha256": sha})

    return handler


def test_download_job_refuses_a_folder_holding_another_jobs_files(tmp_path: Path) -> None:
    client = client_for(
        artifact_server(
            {
                "job_a": {"student.pt": b"a", "curves.png": b"a-png"},
                "job_b": {"student.pt": b"b"},
            }
        )
    )
    out = tmp_path / "student"
    assert [p.name for p in client.download_job("job_a", out)] == ["student.pt", "curves.png"]
    client.download_job("job_a", out, ["student.pt"])  # the same job again: fine

    with pytest.raises(DirectoryInUse, match=r"from job job_a; pass --overwrite"):
        client.download_job("job_b", out)
    assert (out / "student.pt").read_bytes() == b"a"

    client.download_job("job_b", out, overwrite=True)
    assert (out / "student.pt").read_bytes() == b"b"
    assert not (out / "curves.png").exists()  # job_a's file is not left to mix with job_b's
    assert json.loads((out / DOWNLOAD_MARKER).read_text())["job_id"] == "job_b"


def test_download_job_refuses_files_of_an_unknown_download(tmp_path: Path) -> None:
    client = client_for(artifact_server({"job_a": {"student.pt": b"a", "report.json": b"{}"}}))
    (tmp_path / "student.pt").write_bytes(b"from curl")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DirectoryInUse, match=r"holds student.pt from an earlier download"):
        client.download_job("job_a", tmp_path)
    client.download_job("job_a", tmp_path, overwrite=True)
    assert (tmp_path / "student.pt").read_bytes() == b"a"
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("job.yaml", "teacher: {path: t.pt}\nstudent: {arch: mlp\n", ":3:1: "),
        ("job.yaml", "training:\n  epochs: 3\n epochs: 4\n", ":3:2: "),
        ("job.json", '{"teacher": {"path": "t.pt"},\n "student": }', ":2:13: "),
    ],
)
def test_spec_syntax_errors_name_file_line_and_column(
    tmp_path: Path, name: str, text: str, where: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_spec_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}{where}"), message
    assert "\n" not in message
