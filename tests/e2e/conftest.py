"""Real processes for end-to-end tests: the API under uvicorn and a Celery worker, talking
over a real broker to a real database, driven over HTTP like a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled"}


ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database on 127.0.0.1 for one test or module, dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Processes:
    """Child processes with their logs; stopped politely, then killed."""

    log_dir: Path
    children: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        handle = log.open("wb")
        child = subprocess.Popen(args, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        self.children.append((child, log))
        return child

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for _, log in self.children)

    def stop(self) -> None:
        for child, _ in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child, _ in self.children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@dataclass
class Api:
    """A user of the REST API."""

    base: str
    key: str
    processes: Processes
    root: Path | None = None

    @property
    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        )

    def upload(self, path: Path, purpose: str) -> dict[str, Any]:
        with self.client as client, path.open("rb") as handle:
            response = client.post(
                "/v1/files", data={"purpose": purpose}, files={"file": (path.name, handle)}
            )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        with self.client as client:
            response = client.post("/v1/jobs", json=spec)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def get(self, path: str) -> httpx.Response:
        with self.client as client:
            return client.get(path)

    def wait(self, job_id: str, until: set[str] = TERMINAL, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in until:
                return dict(job)
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} still {job['status']}\n{self.processes.logs()}")


def wait_ready(base: str, processes: Processes, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child, _ in processes.children:
            if child.poll() is not None:
                raise AssertionError(f"a process exited early\n{processes.logs()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{base} never became ready\n{processes.logs()}")


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The README's example, made by its own script: a TorchScript teacher and digits.npz."""
    out = tmp_path_factory.mktemp("digits")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples/digits/make_example.py"),
            "--out",
            str(out),
            "--epochs",
            "12",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return {"teacher": out / "teacher.pt", "dataset": out / "digits.npz"}


def student_accuracy(student_pt: Path, dataset: Path) -> float:
    import torch

    model = torch.jit.load(str(student_pt), map_location="cpu")
    model.eval()
    with np.load(dataset, allow_pickle=False) as data:
        x, y = torch.from_numpy(data["x_val"]), torch.from_numpy(data["y_val"])
    with torch.inference_mode():
        predictions = model(x).argmax(dim=1)
    return float((predictions == y).float().mean().item())


def digits_spec(teacher_id: str, dataset_id: str, epochs: int = 6) -> dict[str, Any]:
    return {
        "teacher": {"file_id": teacher_id},
        "student": {"arch": "cnn", "channels": [8, 16], "hidden": 32},
        "dataset": {"file_id": dataset_id},
        "distillation": {"temperature": 4.0, "alpha": 0.7},
        "training": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.01, "seed": 0},
    }


def check_distilled(api: Api, job: dict[str, Any], dataset: Path, download: Path) -> None:
    """A succeeded job's report, metrics and downloads agree with each other."""
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    names = {a["name"] for a in api.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]}
    assert {
        "student.pt",
        "student.safetensors",
        "config.json",
        "report.json",
        "metrics.csv",
        "curves.png",
        "README.md",
    } <= names
    response = api.get(f"/v1/jobs/{job['id']}/artifacts/student.pt")
    assert response.status_code == 200
    download.write_bytes(response.content)
    assert student_accuracy(download, dataset) == report["student"]["accuracy"]
    assert job["result"]["student_accuracy"] == report["student"]["accuracy"]
    assert report["student"]["accuracy"] > 0.85
    assert report["kd_gain"] is None  # no baseline was trained, so no gain is claimed
    report_file = api.get(f"/v1/jobs/{job['id']}/artifacts/report.json").json()
    assert report_file == report
    metrics = api.get(f"/v1/jobs/{job['id']}/metrics?name=val_accuracy").json()["data"]
    assert len(metrics) == job["spec"]["training"]["epochs"]
    kinds = [e["kind"] for e in api.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert kinds[:3] == ["queued", "validating", "running"] and kinds[-1] == "succeeded"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop()


def _key_from_log(log: Path, processes: Processes, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("dk_"):
                return line.strip()
        time.sleep(0.2)
    raise AssertionError(f"`distillery up` printed no key\n{processes.logs()}")


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("embedded")
    processes = Processes(root)
    port = free_port()
    up = [
        sys.executable,
        "-m",
        "app.cli",
        "up",
        "--data-dir",
        str(root / "data"),
        "--port",
        str(port),
    ]
    env = clean_env(
        DISTILLERY_CLIENT_CONFIG=str(root / "client.json"),
        DISTILLERY_WEBHOOK_ALLOW_HOSTS='["127.0.0.1"]',
        DISTILLERY_WEBHOOK_BACKOFF_SECONDS="0.2",
    )
    processes.start("up", up, env)
    try:
        key = _key_from_log(root / "up.log", processes)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, processes)
        yield Api(base, key, processes, root)
    finally:
        processes.stop()
    assert processes.children[0][0].returncode == 0, processes.logs()
