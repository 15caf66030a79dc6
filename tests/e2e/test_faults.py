"""Fault tests: real processes, real brokers and databases on 127.0.0.1, each bounded in
time and stopping by itself. Each prints its figure; RELIABILITY.md records them at full
scale (DISTILLERY_FAULT_SCALE=full)."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    Api,
    Processes,
    clean_env,
    digits_spec,
    free_port,
    fresh_database,
    wait_ready,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

FULL = os.environ.get("DISTILLERY_FAULT_SCALE") == "full"
CLI = [sys.executable, "-m", "app.cli"]
FAST_RECOVERY = {
    "DISTILLERY_LEASE_SECONDS": "3",
    "DISTILLERY_HEARTBEAT_SECONDS": "0.5",
    "DISTILLERY_MAINTENANCE_SECONDS": "1",
    "DISTILLERY_REQUEUE_AFTER_SECONDS": "4",
    "DISTILLERY_CHECKPOINT_EVERY_STEPS": "10",
    "DISTILLERY_PROGRESS_FLUSH_SECONDS": "0.5",
    "DISTILLERY_MAX_ATTEMPTS": "20",
    "DISTILLERY_RATE_LIMIT_PER_MINUTE": "0",
}


@dataclass
class Cluster:
    """An API and any number of workers sharing one database, broker and data dir."""

    root: Path
    env: dict[str, str]
    processes: Processes
    api: Api | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> Api:
        subprocess.run(
            [*CLI, "migrate"], env=self.env, check=True, capture_output=True, timeout=120
        )
        key = (
            subprocess.run(
                [*CLI, "keys", "create", "--tenant", "faults"],
                env=self.env,
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        port = free_port()
        self.processes.start("api", [*CLI, "api", "--port", str(port)], self.env)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, self.processes)
        self.api = Api(base, key, self.processes, self.root)
        return self.api

    def start_worker(self) -> subprocess.Popen[bytes]:
        name = f"worker{len(self.workers)}"
        worker = self.processes.start(name, [*CLI, "worker", "--quiet"], self.env)
        self.workers.append(worker)
        return worker

    def alive_workers(self) -> list[subprocess.Popen[bytes]]:
        return [w for w in self.workers if w.poll() is None]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    env = clean_env(DISTILLERY_DATA_DIR=str(tmp_path / "data"), **FAST_RECOVERY)
    processes = Processes(tmp_path)
    yield Cluster(tmp_path, env, processes)
    processes.stop()


class PrivateRedis:
    """A redis-server of the test's own on a free port, to stop and start at will."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.root = root
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            )
            if probe.stdout.strip() == "PONG":
                return
            time.sleep(0.1)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def pg_database() -> Iterator[str]:
    with fresh_database("distillery_faults") as url:
        yield url


def upload_digits(api: Api, digits: dict[str, Path]) -> tuple[str, str]:
    return api.upload(digits["teacher"], "teacher")["id"], api.upload(digits["dataset"], "dataset")[
        "id"
    ]


def events(api: Api, job_id: str) -> list[dict[str, Any]]:
    return list(api.get(f"/v1/jobs/{job_id}/events").json()["data"])


def assert_runs_never_overlap(api: Api, job_id: str) -> int:
    """Between two runs of a job there is always a hand-back: it never ran twice at once.
    Returns how many runs the job had."""
    kinds = [e["kind"] for e in events(api, job_id) if e["kind"] in ("validating", "requeued")]
    runs = kinds.count("validating")
    for first, second in itertools.pairwise(kinds):
        assert (first, second) != ("validating", "validating"), (job_id, kinds)
    return runs


def test_kill_9_workers_mid_training(cluster: Cluster, digits: dict[str, Path]) -> None:
    """kill -9 a worker at random moments, N times over several jobs: every job succeeds,
    none runs twice at once, none stays running, and resumed jobs end where an unbroken
    run of the same spec ends."""
    jobs_n, kills_n = (8, 20) if FULL else (3, 4)
    api = cluster.start()
    teacher, dataset = upload_digits(api, digits)
    spec = digits_spec(teacher, dataset, epochs=10)
    jobs = [api.submit(spec)["id"] for _ in range(jobs_n)]
    cluster.start_worker()
    cluster.start_worker()
    rng = random.Random(0)
    kills = 0
    deadline = time.monotonic() + (900 if FULL else 240)
    while kills < kills_n and time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 2.5))
        running = [j for j in jobs if api.get(f"/v1/jobs/{j}").json()["status"] == "running"]
        alive = cluster.alive_workers()
        if not running or not alive:
            if all(api.get(f"/v1/jobs/{j}").json()["status"] == "succeeded" for j in jobs):
                break
            continue
        victim = rng.choice(alive)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        kills += 1
        cluster.start_worker()
    finished = [api.wait(j, timeout=300) for j in jobs]
    runs = [assert_runs_never_overlap(api, j) for j in jobs]
    reference = api.wait(api.submit(spec)["id"], timeout=300)  # never disturbed
    statuses = [job["status"] for job in finished]
    print(
        f"\nkill -9: {kills} kills over {jobs_n} jobs; runs per job {runs}; "
        f"statuses {statuses}; lost 0, stuck 0, duplicated 0"
    )
    assert statuses == ["succeeded"] * jobs_n
    assert kills >= 1 and sum(runs) > jobs_n  # the kills did interrupt runs
    expected = api.get(f"/v1/jobs/{reference['id']}/report").json()
    for job in finished:
        report = api.get(f"/v1/jobs/{job['id']}/report").json()
        assert report["student"]["accuracy"] == expected["student"]["accuracy"]
        assert report["agreement"] == expected["agreement"]


def test_sigterm_hands_the_job_back_and_it_resumes(
    cluster: Cluster, digits: dict[str, Path]
) -> None:
    api = cluster.start()
    teacher, dataset = upload_digits(api, digits)
    job_id = api.submit(digits_spec(teacher, dataset, epochs=40))["id"]
    first = cluster.start_worker()
    deadline = time.monotonic() + 120
    while api.get(f"/v1/jobs/{job_id}").json()["progress"] < 0.15:
        assert time.monotonic() < deadline, cluster.processes.logs()
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 0
    handed = api.get(f"/v1/jobs/{job_id}").json()
    assert handed["status"] == "queued" and handed["attempt"] == 0
    cluster.start_worker()
    done = api.wait(job_id, timeout=300)
    kinds = [e["kind"] for e in events(api, job_id)]
    print(f"\nSIGTERM: job handed back at {handed['progress']:.0%} and resumed: {done['status']}")
    assert done["status"] == "succeeded" and done["attempt"] == 1
    assert "requeued" in kinds and "resumed" in kinds


def test_max_runtime_fails_the_job_with_its_own_code(
    cluster: Cluster, digits: dict[str, Path]
) -> None:
    api = cluster.start()
    teacher, dataset = upload_digits(api, digits)
    spec = digits_spec(teacher, dataset, epochs=500)
    spec["training"]["max_runtime_seconds"] = 3
    cluster.start_worker()
    job = api.wait(api.submit(spec)["id"], timeout=120)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "max_runtime_exceeded"
    assert "max_runtime_seconds (3 s)" in job["error"]["message"]


def test_broker_down_while_jobs_are_submitted(
    cluster: Cluster, private_redis: PrivateRedis, digits: dict[str, Path]
) -> None:
    """Stop Redis, submit jobs (each is a 201 and stays queued), start Redis: every job runs."""
    jobs_n = 10 if FULL else 3
    cluster.env["DISTILLERY_BROKER_URL"] = private_redis.url
    api = cluster.start()
    teacher, dataset = upload_digits(api, digits)
    cluster.start_worker()
    private_redis.stop()
    assert httpx.get(f"{api.base}/readyz", timeout=10).status_code == 503
    jobs = [api.submit(digits_spec(teacher, dataset, epochs=2))["id"] for _ in range(jobs_n)]
    assert {api.get(f"/v1/jobs/{j}").json()["status"] for j in jobs} == {"queued"}
    private_redis.start()
    finished = [api.wait(j, timeout=240)["status"] for j in jobs]
    print(f"\nbroker outage: {jobs_n} jobs submitted while Redis was down; ended {finished}")
    assert finished == ["succeeded"] * jobs_n
    assert httpx.get(f"{api.base}/readyz", timeout=10).status_code == 200


def test_postgres_restart_during_a_run(
    cluster: Cluster, private_redis: PrivateRedis, pg_database: str, digits: dict[str, Path]
) -> None:
    """Restart PostgreSQL mid-run: the job finishes or fails cleanly, never stays stuck."""
    cluster.env.update(DISTILLERY_DATABASE_URL=pg_database, DISTILLERY_BROKER_URL=private_redis.url)
    api = cluster.start()
    teacher, dataset = upload_digits(api, digits)
    cluster.start_worker()
    job_id = api.submit(digits_spec(teacher, dataset, epochs=40))["id"]
    api.wait(job_id, until={"running"}, timeout=120)
    time.sleep(1.0)
    cluster_name = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", cluster_name, "main", "restart"],
        check=True,
        timeout=120,
    )
    deadline = time.monotonic() + 240
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            job = api.get(f"/v1/jobs/{job_id}").json()
        except httpx.HTTPError:
            job = {}
        if job.get("status") in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(0.5)
    print(
        f"\nPostgreSQL restart mid-run: job ended {job.get('status')} "
        f"after {job.get('attempt')} attempt(s)"
    )
    assert job.get("status") in {"succeeded", "failed"}, cluster.processes.logs()
    if job["status"] == "failed":
        assert job["error"]["message"]


def test_concurrent_submissions_with_repeated_keys(
    cluster: Cluster, private_redis: PrivateRedis, pg_database: str, digits: dict[str, Path]
) -> None:
    """1,000 concurrent submissions (half repeat an earlier key): no 5xx, no duplicates."""
    total = 1000
    cluster.env.update(DISTILLERY_DATABASE_URL=pg_database, DISTILLERY_BROKER_URL=private_redis.url)
    api = cluster.start()
    teacher, dataset = upload_digits(api, digits)
    spec = digits_spec(teacher, dataset, epochs=1)
    keys = [f"k{i % (total // 2)}" for i in range(total)]
    random.Random(1).shuffle(keys)
    statuses: list[int] = []
    ids: dict[str, set[str]] = {}
    lock = threading.Lock()

    def submit(client: httpx.Client, key: str) -> None:
        response = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": key})
        with lock:
            statuses.append(response.status_code)
            if response.status_code in (200, 201):
                ids.setdefault(key, set()).add(response.json()["id"])

    started = time.monotonic()
    with (
        httpx.Client(
            base_url=api.base,
            headers={"Authorization": f"Bearer {api.key}"},
            timeout=120,
            limits=httpx.Limits(max_connections=64),
        ) as client,
        ThreadPoolExecutor(max_workers=64) as pool,
    ):
        list(pool.map(lambda key: submit(client, key), keys))
    seconds = time.monotonic() - started
    jobs = {job_id for found in ids.values() for job_id in found}
    server_errors = sum(1 for s in statuses if s >= 500)
    print(
        f"\n{total} concurrent submissions in {seconds:.1f} s: {server_errors} 5xx, "
        f"{len(jobs)} jobs for {total // 2} keys, statuses "
        f"{ {s: statuses.count(s) for s in sorted(set(statuses))} }"
    )
    assert server_errors == 0
    assert set(statuses) <= {200, 201}
    assert all(len(found) == 1 for found in ids.values())
    assert len(jobs) == total // 2


def test_concurrent_reads_never_starve_the_pool(cluster: Cluster, digits: dict[str, Path]) -> None:
    """96 clients reading one job at once: every answer a 200 (a request that waits for a
    database connection held by another request's teardown would end in a 5xx)."""
    api = cluster.start()
    teacher, dataset = upload_digits(api, digits)
    job_id = api.submit(digits_spec(teacher, dataset))["id"]
    statuses: list[int] = []
    lock = threading.Lock()

    def read(_: int) -> None:
        with httpx.Client(
            base_url=api.base, headers={"Authorization": f"Bearer {api.key}"}, timeout=120
        ) as client:
            for _ in range(15):
                status = client.get(f"/v1/jobs/{job_id}").status_code
                with lock:
                    statuses.append(status)

    with ThreadPoolExecutor(max_workers=96) as pool:
        list(pool.map(read, range(96)))
    print(
        f"\nconcurrent reads: {len(statuses)} requests from 96 clients, "
        f"{sum(s != 200 for s in statuses)} not 200"
    )
    assert statuses == [200] * (96 * 15)
