"""Real processes for the API, queue and artifact sections: databases seeded directly with
SQLAlchemy, `python -m app.cli api` and `python -m app.cli worker` started as users run
them, a load generator in a separate process, and /proc readings of the server.

Everything listens on and targets 127.0.0.1 only, and every load run is bounded in time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

# A job as `POST /v1/jobs` stores it: the README's digits spec, filled in by validation.
SPEC: dict[str, Any] = {
    "teacher": {"file_id": "file_0193f0c2a1b4e8d2c9a1f3b7", "format": "auto", "arch": None},
    "student": {"arch": "cnn", "layout": "auto", "channels": [8, 16], "kernel_size": 3,
                "hidden": 32, "dropout": 0.0},
    "dataset": {"file_id": "file_0193f0c2a1b4e8d2c9a1f3b8", "builtin": None, "format": "auto",
                "label_column": "label", "image_size": [32, 32], "grayscale": False},
    "distillation": {"temperature": 4.0, "alpha": 0.7, "losses": None,
                     "augment": {"mixup": 0.0, "noise": 0.0, "crop": 0, "flip": False},
                     "cache_teacher": True},
    "training": {"epochs": 15, "batch_size": 64, "learning_rate": 0.01, "weight_decay": 0.01,
                 "seed": 0, "val_fraction": 0.2, "device": "auto", "max_runtime_seconds": None,
                 "schedule": "warmup_cosine", "warmup_fraction": 0.05, "grad_clip": 1.0,
                 "early_stopping_patience": None, "precision": "auto"},
    "baseline": False,
}  # fmt: skip
RESULT: dict[str, Any] = {
    "teacher_accuracy": 0.9916,
    "student_accuracy": 0.9805,
    "agreement": 0.9833,
    "quality_retained": 0.9888,
    "size_reduction": 0.9885,
    "speedup": 2.04,
    "kd_gain": None,
    "artifacts": ["README.md", "config.json", "curves.png", "metrics.csv", "report.json",
                  "student.pt", "student.safetensors"],
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir.resolve() / 'distillery.db'}"


# Databases ------------------------------------------------------------------------------


def migrate(url: str) -> None:
    """The app's Alembic migrations, applied to `url` from this process."""
    from alembic import command

    from app.db import make_engine
    from app.migrate import alembic_config

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


@contextmanager
def postgres_database(name: str) -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1 (trust auth), dropped afterwards."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_available() -> bool:
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def redis_available(url: str = "redis://127.0.0.1:6379/0") -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except Exception:
        return False


def job_id_at(moment: datetime, n: int) -> str:
    """An id shaped like app.ids.new_id: milliseconds then a unique tail, so ids sort by
    creation time as the real ones do."""
    return f"job_{int(moment.timestamp() * 1000):012x}{n:012x}"


@dataclass
class Seeded:
    url: str
    key: str
    tenant_id: str
    job_ids: list[str] = field(default_factory=list)


def seed(url: str, n_jobs: int, tenant: str = "bench", batch: int = 5000) -> Seeded:
    """Migrate `url`, create a tenant with an API key, and insert `n_jobs` jobs for it (90%
    succeeded, 5% failed, 3% running, 2% queued; one a minute, the newest now)."""
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from app.db import make_engine
    from app.models import Job
    from app.services.keys import create_key, get_or_create_tenant

    migrate(url)
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            key = create_key(session, tenant)
            tenant_id = get_or_create_tenant(session, tenant).id
            session.commit()
        start = datetime.now(UTC) - timedelta(minutes=n_jobs)
        ids: list[str] = []
        with engine.begin() as connection:
            rows: list[dict[str, Any]] = []
            for i in range(n_jobs):
                created = start + timedelta(minutes=i)
                job_id = job_id_at(created, i)
                ids.append(job_id)
                rows.append(_job_row(job_id, tenant_id, created, i))
                if len(rows) == batch:
                    connection.execute(insert(Job), rows)
                    rows = []
            if rows:
                connection.execute(insert(Job), rows)
    finally:
        engine.dispose()
    return Seeded(url, key, tenant_id, ids)


def _job_row(job_id: str, tenant_id: str, created: datetime, i: int) -> dict[str, Any]:
    bucket = i % 100
    status = (
        "succeeded" if bucket < 90 else "failed" if bucket < 95 else "running" if bucket < 98
        else "queued"
    )  # fmt: skip
    done = status in ("succeeded", "failed")
    return {
        "id": job_id,
        "tenant_id": tenant_id,
        "status": status,
        "spec": SPEC,
        "progress": 1.0 if done else 0.5 if status == "running" else 0.0,
        "error": {"code": "invalid_teacher", "message": "The teacher file is not TorchScript."}
        if status == "failed"
        else None,
        "result": RESULT if status == "succeeded" else None,
        "attempt": 0 if status == "queued" else 1,
        "enqueued_at": created,
        "created_at": created,
        "started_at": None if status == "queued" else created + timedelta(seconds=1),
        "finished_at": created + timedelta(seconds=30) if done else None,
        "updated_at": created,
    }


# Processes ------------------------------------------------------------------------------


@dataclass
class Processes:
    """Child processes with their logs; stopped with SIGINT, then killed."""

    log_dir: Path
    children: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as handle:
            child = subprocess.Popen(
                args, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT
            )
        self.children.append((child, log))
        return child

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.children)

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
        self.children.clear()


@contextmanager
def processes(log_dir: Path) -> Iterator[Processes]:
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        procs.stop()


def start_api(
    procs: Processes,
    name: str,
    data_dir: Path,
    url: str | None = None,
    **env: str,
) -> tuple[str, subprocess.Popen[bytes]]:
    """`python -m app.cli api` on a free port of 127.0.0.1; returns (base URL, process)."""
    port = free_port()
    values = {
        "DISTILLERY_DATA_DIR": str(data_dir),
        "DISTILLERY_RATE_LIMIT_PER_MINUTE": "0",
        **env,
    }
    if url:
        values["DISTILLERY_DATABASE_URL"] = url
    child = procs.start(
        name,
        [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        clean_env(**values),
    )
    return f"http://127.0.0.1:{port}", child


def wait_up(base: str, procs: Processes, path: str = "/healthz", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child, _ in procs.children:
            if child.poll() is not None:
                raise RuntimeError(f"a process exited early\n{procs.logs()}")
        try:
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base} never answered {path}\n{procs.logs()}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# Load -----------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    result: dict[str, Any] = {"tool": "wrk"}
    for pct in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.M)
        if match:
            result[f"p{pct}_ms"] = _ms(match.group(1))
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    if match:
        result["requests"] = int(match.group(1))
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    result["rps"] = float(match.group(1)) if match else 0.0
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    result["socket_errors"] = sum(int(g) for g in match.groups()) if match else 0
    return result


def load(
    url: str,
    seconds: float,
    connections: int = 64,
    headers: dict[str, str] | None = None,
    allow_empty: bool = False,
) -> dict[str, Any]:
    """Closed-loop load on `url` from a separate process for `seconds`: wrk when it is
    installed, else bench/loadgen.py (asyncio, keep-alive). A run that completes no request
    is an error unless `allow_empty` (the deadlock probe expects some)."""
    headers = headers or {}
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("load is only ever sent to 127.0.0.1")
    wrk = shutil.which("wrk")
    if wrk:
        args = [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "10s",
        ]
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        done = subprocess.run(
            [*args, url], capture_output=True, text=True, timeout=seconds + 30, check=True
        )
        parsed = parse_wrk(done.stdout)
        if not parsed.get("requests") and not allow_empty:
            raise RuntimeError(f"wrk made no requests to {url}:\n{done.stdout}{done.stderr}")
        return parsed
    args = [sys.executable, "-m", "bench.loadgen", url, "--seconds", str(seconds)]
    args += ["--connections", str(connections)]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=seconds + 60, check=True, cwd=ROOT
    )
    return dict(json.loads(done.stdout))


def measure(
    url: str,
    pid: int,
    seconds: float,
    connections: int = 64,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`load`, plus the server's CPU seconds per request over the run (a figure that other
    tenants' load on the machine moves much less than requests per second)."""
    before = cpu_seconds(pid)
    result = load(url, seconds, connections, headers)
    used = cpu_seconds(pid) - before
    result["server_cpu_s"] = used
    result["server_cpu_ms_per_request"] = 1000 * used / max(result.get("requests", 0), 1)
    return result


def start_worker(
    procs: Processes, name: str, data_dir: Path, args: list[str] | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """`python -m app.cli worker` (or another entry point given as `args`)."""
    values = {"DISTILLERY_DATA_DIR": str(data_dir), **env}
    command = args or ["-m", "app.cli", "worker", "--loglevel", "WARNING", "--quiet"]
    return procs.start(name, [sys.executable, *command], clean_env(**values))


def upload(base: str, key: str, path: Path, purpose: str, timeout: float = 120) -> str:
    """Upload a file and wait until it is usable; returns its id."""
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=auth, timeout=60) as client:
        with path.open("rb") as handle:
            response = client.post(
                "/v1/files", data={"purpose": purpose}, files={"file": (path.name, handle)}
            )
        response.raise_for_status()
        file = response.json()
        deadline = time.monotonic() + timeout
        while file.get("status", "ready") not in ("ready", "failed", "invalid"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"file {file['id']} still {file.get('status')}")
            time.sleep(0.2)
            file = client.get(f"/v1/files/{file['id']}").json()
        if file.get("status", "ready") != "ready":
            raise RuntimeError(f"upload {path.name} ended {file.get('status')}: {file}")
        return str(file["id"])


def parse_ts(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
