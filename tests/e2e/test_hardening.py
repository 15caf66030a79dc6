"""Issue 15 against a real API process (uvicorn, SQLite, no worker): what one request can
make the server hold in memory, and what it refuses before reading."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Processes, clean_env, free_port, wait_ready

BIG_BODY_BYTES = 40 * 1024 * 1024
RSS_BOUND_MB = 40


@dataclass
class Server:
    base: str
    key: str
    pid: int
    env: dict[str, str]

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        return _status_kib(self.pid, "VmHWM:") / 1024

    def rss_mb(self) -> float:
        return _status_kib(self.pid, "VmRSS:") / 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("hardening")
    processes = Processes(root)
    env = clean_env(DISTILLERY_DATA_DIR=str(root / "data"), DISTILLERY_RATE_LIMIT_PER_MINUTE="0")
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=env, check=True)
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--tenant", "hardening"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    api = processes.start(
        "api",
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
        env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, processes)
        yield Server(base, key, api.pid, env)
    finally:
        processes.stop()


def _big_json() -> Iterator[bytes]:
    """A JSON job spec padded to BIG_BODY_BYTES, streamed (no Content-Length)."""
    yield b'{"teacher": {"file_id": "file_x"}, "padding": ['
    chunk = b"1," * (512 * 1024)
    for _ in range(BIG_BODY_BYTES // len(chunk)):
        yield chunk
    yield b"1]}"


def _post_big(server: Server, key: str, declared: bool) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body: bytes | Iterator[bytes] = b"".join(_big_json()) if declared else _big_json()
    try:
        return httpx.post(f"{server.base}/v1/jobs", content=body, headers=headers, timeout=120)
    except httpx.WriteError as exc:  # the server answered and closed before the body ended
        raise AssertionError("the server closed the connection without an answer") from exc


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_huge_job_body_is_refused_without_reading_it(server: Server, declared: bool) -> None:
    server.reset_peak()
    before = server.rss_mb()
    response = _post_big(server, server.key, declared)
    grew = server.peak_mb() - before
    assert response.status_code == 413, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == "payload_too_large" and "bytes" in error["message"], error
    assert grew < RSS_BOUND_MB, f"the API's RSS grew {grew:.0f} MB for one refused request"


def test_an_unknown_key_is_refused_before_the_body_is_parsed(server: Server) -> None:
    """A body that is not even JSON: parsing it first would answer 422, not 401."""
    response = httpx.post(
        f"{server.base}/v1/jobs",
        content=b'{"teacher": ' + b"[" * 100_000,
        headers={"Authorization": "Bearer not-a-key", "Content-Type": "application/json"},
    )
    assert response.status_code == 401, response.text
