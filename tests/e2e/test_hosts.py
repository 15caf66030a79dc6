"""Workers on other machines: three "hosts" in network namespaces, nothing on disk shared.

    test (root ns) ── veth ── api host: API, its own PostgreSQL, Redis, S3 (moto)
                               ├── veth ── worker host 1 (own mount ns, tmpfs data dir)
                               └── veth ── worker host 2 (own mount ns, tmpfs data dir)

Workers get only the database URL, the broker URL and the storage URL (s3://, with
AWS_ENDPOINT_URL at the api host). A job succeeds; then the worker host running a second
job is cut off (its link down) mid-training; the other worker resumes the job from the
checkpoint in the object store once the lease lapses, and the job succeeds. When the
cut-off host's link comes back, its attempt (still running) finds every write refused by
the fence (worker/fence.py) and stops: no duplicated metric point, two attempts, and the
artifacts are the second attempt's. Needs root and `ip netns` (CI runs as root).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ROOT, Api, Processes, wait_ready
from tests.s3 import AWS_ENV

CLI = [sys.executable, "-m", "app.cli"]
# Fast recovery: a lapsed lease is noticed within seconds, checkpoints every 10 steps.
SETTINGS = {
    "DISTILLERY_LEASE_SECONDS": "4",
    "DISTILLERY_HEARTBEAT_SECONDS": "0.5",
    "DISTILLERY_MAINTENANCE_SECONDS": "1",
    "DISTILLERY_CHECKPOINT_EVERY_STEPS": "10",
    "DISTILLERY_PROGRESS_FLUSH_SECONDS": "0.5",
    "DISTILLERY_MAX_ATTEMPTS": "5",
    "DISTILLERY_RATE_LIMIT_PER_MINUTE": "0",
}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "setpriv", "redis-server"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` is unavailable"
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return "needs PostgreSQL's binaries (/usr/lib/postgresql/*/bin)"
    if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        return "needs the postgres user (initdb refuses root)"
    return None


_WHY_NOT = _why_not()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.netns,
    pytest.mark.skipif(
        _WHY_NOT is not None, reason=f"separate hosts in network namespaces: {_WHY_NOT}"
    ),
]


def sh(*args: str) -> None:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"


@dataclass
class Hosts:
    """The namespaces and their addresses: the api host is .1 on each worker's link."""

    tag: str
    subnet: str  # "10.251" or another free /16

    @property
    def api_ns(self) -> str:
        return f"dh{self.tag}api"

    def worker_ns(self, n: int) -> str:
        return f"dh{self.tag}w{n}"

    @property
    def api_from_test(self) -> str:
        return f"{self.subnet}.0.2"

    def api_from_worker(self, n: int) -> str:
        return f"{self.subnet}.{n}.1"

    def build(self) -> None:
        for ns in (self.api_ns, self.worker_ns(1), self.worker_ns(2)):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "dev", "lo", "up")  # a new namespace's lo is down
        test_end = f"dh{self.tag}t"
        sh("ip", "link", "add", test_end, "type", "veth", "peer", "name", "tester", "netns",
           self.api_ns)  # fmt: skip
        sh("ip", "addr", "add", f"{self.subnet}.0.1/24", "dev", test_end)
        sh("ip", "link", "set", "dev", test_end, "up")
        sh("ip", "-n", self.api_ns, "addr", "add", f"{self.api_from_test}/24", "dev", "tester")
        sh("ip", "-n", self.api_ns, "link", "set", "dev", "tester", "up")
        for n in (1, 2):
            ns = self.worker_ns(n)
            sh("ip", "-n", self.api_ns, "link", "add", f"w{n}", "type", "veth", "peer", "name",
               "uplink", "netns", ns)  # fmt: skip
            sh("ip", "-n", self.api_ns, "addr", "add", f"{self.api_from_worker(n)}/24", "dev",
               f"w{n}")  # fmt: skip
            sh("ip", "-n", self.api_ns, "link", "set", "dev", f"w{n}", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.subnet}.{n}.2/24", "dev", "uplink")
            sh("ip", "-n", ns, "link", "set", "dev", "uplink", "up")

    def link(self, n: int, state: str) -> None:
        """Cut worker host `n` off (`down`) or plug it back (`up`)."""
        sh("ip", "-n", self.worker_ns(n), "link", "set", "dev", "uplink", state)

    def tear_down(self) -> None:
        for ns in (self.api_ns, self.worker_ns(1), self.worker_ns(2)):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():  # only what this test started lives there
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", f"dh{self.tag}t"], capture_output=True)


def _free_subnet() -> str:
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    for second in range(251, 200, -1):
        if f"10.{second}." not in routes:
            return f"10.{second}"
    raise AssertionError("no free 10.x.0.0/16 for the test's links")


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def as_postgres(*args: str) -> list[str]:
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", *args]


def start_postgres(hosts: Hosts, processes: Processes, pgdata: Path) -> None:
    """The api host's own PostgreSQL (the machine's listens on 127.0.0.1 of the root
    namespace only). initdb refuses root: it runs as the postgres user."""
    bin_dir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
    shutil.chown(pgdata, "postgres", "postgres")
    subprocess.run(
        as_postgres(str(bin_dir / "initdb"), "-D", str(pgdata / "db"), "-U", "postgres",
                    "-A", "trust", "--no-sync"),
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with (pgdata / "db" / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {hosts.subnet}.0.0/16 trust\n")
    processes.start(
        "postgres",
        in_ns(hosts.api_ns, *as_postgres(
            str(bin_dir / "postgres"), "-D", str(pgdata / "db"), "-c", "listen_addresses=*",
            "-c", f"unix_socket_directories={pgdata}", "-c", "fsync=off",
            # A worker cut off inside a transaction must not hold the job's row for hours:
            # the server ends such a session (recommended for workers on other hosts).
            "-c", "idle_in_transaction_session_timeout=3s",
        )),
        os.environ.copy(),
    )  # fmt: skip
    _wait_for(lambda: _pg_ready(hosts), "PostgreSQL on the api host", processes)
    _sql(hosts, "postgres", "CREATE DATABASE distillery", autocommit=True)


def _pg_ready(hosts: Hosts) -> bool:
    import psycopg

    try:
        psycopg.connect(_dsn(hosts, "postgres"), connect_timeout=1).close()
    except psycopg.OperationalError:
        return False
    return True


def _dsn(hosts: Hosts, db: str) -> str:
    return f"host={hosts.api_from_test} port=5432 user=postgres dbname={db}"


def _sql(hosts: Hosts, db: str, query: str, *params: Any, autocommit: bool = False) -> list[Any]:
    import psycopg

    with psycopg.connect(_dsn(hosts, db), autocommit=autocommit, connect_timeout=5) as conn:
        cursor = conn.execute(query, params)
        return list(cursor.fetchall()) if cursor.description else []


def _wait_for(ready: Any, what: str, processes: Processes, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} never became ready\n{processes.logs()}")


@dataclass
class Cluster:
    hosts: Hosts
    api: Api
    bucket: str
    worker_data: Path  # the workers' data dir path; each mounts its own tmpfs there
    logs: dict[int, Path]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    hosts = Hosts(uuid.uuid4().hex[:6], _free_subnet())
    processes = Processes(tmp_path)
    pgdata = Path(tempfile.mkdtemp(prefix="distillery-hosts-pg-"))
    worker_data = tmp_path / "worker-data"
    worker_data.mkdir()
    try:
        hosts.build()
        start_postgres(hosts, processes, pgdata)
        yield _start_services(hosts, processes, tmp_path, worker_data)
    finally:
        processes.stop()
        hosts.tear_down()
        shutil.rmtree(pgdata, ignore_errors=True)


def _start_services(hosts: Hosts, processes: Processes, root: Path, worker_data: Path) -> Cluster:
    api_ns = hosts.api_ns
    processes.start(
        "redis",
        in_ns(api_ns, "redis-server", "--port", "6379", "--bind", "0.0.0.0",
              "--protected-mode", "no", "--save", "", "--appendonly", "no",
              "--dir", str(root)),
        os.environ.copy(),
    )  # fmt: skip
    processes.start(
        "s3", in_ns(api_ns, *CLI[:2], "moto.server", "-H", "0.0.0.0", "-p", "9000"), _env()
    )
    s3_url = f"http://{hosts.api_from_test}:9000"
    _wait_for(lambda: _answers(s3_url), "the S3 endpoint", processes)
    bucket = f"distillery-{hosts.tag}"
    _s3_client(hosts).create_bucket(Bucket=bucket)

    api_env = _env(
        DISTILLERY_DATA_DIR=str(root / "api-data"),
        DISTILLERY_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:5432/distillery",
        DISTILLERY_BROKER_URL="redis://127.0.0.1:6379/0",
        DISTILLERY_STORAGE_URL=f"s3://{bucket}/d",
        DISTILLERY_STORAGE_PUBLIC_URL=s3_url,  # presigned downloads for the test's side
        AWS_ENDPOINT_URL="http://127.0.0.1:9000",
    )
    subprocess.run(in_ns(api_ns, *CLI, "migrate"), env=api_env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    key = subprocess.run(
        in_ns(api_ns, *CLI, "keys", "create", "--tenant", "hosts"),
        env=api_env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    processes.start("api", in_ns(api_ns, *CLI, "api", "--host", "0.0.0.0", "--port", "8000"),
                    api_env)  # fmt: skip
    base = f"http://{hosts.api_from_test}:8000"
    wait_ready(base, processes)

    logs = {}
    for n in (1, 2):
        api_host = hosts.api_from_worker(n)
        env = _env(
            # Only these three URLs (and the store's endpoint): no shared disk.
            DISTILLERY_DATABASE_URL=f"postgresql+psycopg://postgres@{api_host}:5432/distillery",
            DISTILLERY_BROKER_URL=f"redis://{api_host}:6379/0",
            DISTILLERY_STORAGE_URL=f"s3://{bucket}/d",
            AWS_ENDPOINT_URL=f"http://{api_host}:9000",
            DISTILLERY_DATA_DIR=str(worker_data),
            TMPDIR=str(worker_data / "tmp"),
        )
        # Its own mount namespace with an empty tmpfs as data dir, and its own host name.
        boot = ('hostname "$0" && mount -t tmpfs -o size=2g tmpfs "$DISTILLERY_DATA_DIR" '
                '&& mkdir "$TMPDIR" && exec "$@"')  # fmt: skip
        processes.start(
            f"worker{n}",
            in_ns(hosts.worker_ns(n), "unshare", "--mount", "--uts", "--", "sh", "-c", boot,
                  f"worker-{n}", *CLI, "worker", "--quiet"),
            env,
        )  # fmt: skip
        logs[n] = root / f"worker{n}.log"
    api = Api(base, key, processes, root)
    _wait_for(lambda: _workers(api) >= 2, "two workers", processes, timeout=120)
    return Cluster(hosts, api, bucket, worker_data, logs)


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "AWS_"))}
    env.update(AWS_ENV, **SETTINGS, **values)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


def _workers(api: Api) -> int:
    queues = api.get("/v1/queues").json()["data"]
    return max((q["workers"] for q in queues), default=0)


def spec(teacher_id: str, epochs: int) -> dict[str, Any]:
    return {
        "teacher": {"file_id": teacher_id},
        "student": {"arch": "cnn", "channels": [8, 16], "hidden": 32},
        "dataset": {"builtin": "digits"},
        "distillation": {"temperature": 4.0, "alpha": 0.7},
        "training": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.01, "seed": 0},
    }


def _s3_client(hosts: Hosts) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://{hosts.api_from_test}:9000",
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
    )


def _s3_keys(cluster: Cluster, prefix: str) -> list[str]:
    answer = _s3_client(cluster.hosts).list_objects_v2(Bucket=cluster.bucket, Prefix=f"d/{prefix}")
    return sorted(item["Key"].removeprefix(f"d/{prefix}") for item in answer.get("Contents", []))


def _events(api: Api, job_id: str) -> list[dict[str, Any]]:
    return list(api.get(f"/v1/jobs/{job_id}/events").json()["data"])


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def _wait_log(log: Path, text: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return time.time()
        time.sleep(0.2)
    raise AssertionError(f"{log.name} never said {text!r}:\n{log.read_text()[-6000:]}")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README example's teacher, trained briefly: this test is about hosts, not skill."""
    out = tmp_path_factory.mktemp("teacher")
    subprocess.run(
        [*CLI[:1], str(ROOT / "examples/digits/make_example.py"), "--out", str(out),
         "--epochs", "2"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out / "teacher.pt"


@pytest.mark.timeout(900)  # a few minutes on an idle machine; CI machines are shared
def test_a_host_cut_off_mid_training_loses_its_job_and_its_stale_writes(
    teacher: Path, cluster: Cluster
) -> None:
    api, hosts = cluster.api, cluster.hosts
    teacher_id = api.upload(teacher, "teacher")["id"]

    first = api.wait(api.submit(spec(teacher_id, epochs=1))["id"], timeout=300)
    assert first["status"] == "succeeded", first

    job_id = api.submit(spec(teacher_id, epochs=20))["id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # running, with a checkpoint recorded in the store
        ((status, worker, checkpoints),) = _sql(
            hosts, "distillery", "SELECT status, worker, checkpoints FROM jobs WHERE id = %s",
            job_id,
        )  # fmt: skip
        if status == "running" and checkpoints:
            break
        assert status in ("queued", "validating", "running"), status
        time.sleep(0.1)
    else:
        raise AssertionError(f"job {job_id} never checkpointed\n{api.processes.logs()}")
    victim = 1 if worker.startswith("worker-1:") else 2
    survivor = 3 - victim
    cut_at = time.time()
    hosts.link(victim, "down")

    done = api.wait(job_id, timeout=300)
    succeeded_at = time.time()
    hosts.link(victim, "up")
    stopped_at = _wait_log(cluster.logs[victim], "stale attempt 1 stopped", timeout=240)
    victim_log = cluster.logs[victim].read_text(errors="replace")

    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    events = _events(api, job_id)
    kinds = [e["kind"] for e in events]
    claims = [e["data"]["worker"] for e in events if e["kind"] == "validating"]
    assert [w.split(":")[0] for w in claims] == [f"worker-{victim}", f"worker-{survivor}"]
    assert kinds.count("requeued") == 1 and kinds.count("resumed") == 1, kinds
    resumed = next(e for e in events if e["kind"] == "resumed")
    assert resumed["data"]["step"] > 0  # from the checkpoint the cut-off host stored
    assert kinds[-1] == "succeeded"

    metrics = api.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    points = [(m["name"], m["step"]) for m in metrics]
    assert len(points) == len(set(points))  # no duplicated metric point
    assert len([p for p in points if p[0] == "val_accuracy"]) == 20

    artifacts = api.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]
    assert artifacts and all(a["name"] for a in artifacts)
    stored = _s3_keys(cluster, f"artifacts/{job_id}/")
    assert stored and all(k.startswith("2/") for k in stored), stored  # attempt 2's only
    assert _s3_keys(cluster, f"checkpoints/{job_id}/") == []  # the stale pushes deleted too
    redirect = api.get(f"/v1/jobs/{job_id}/artifacts/student.pt")
    assert redirect.status_code == 307
    student = httpx.get(redirect.headers["location"], timeout=30)
    sha = next(a["sha256"] for a in artifacts if a["name"] == "student.pt")
    assert hashlib.sha256(student.content).hexdigest() == sha

    refused = [line for line in victim_log.splitlines() if "refused" in line]
    assert any("no longer owns the job" in line for line in refused), victim_log[-4000:]
    (stopped,) = [line for line in refused if "stale attempt 1 stopped" in line]
    assert not list(cluster.worker_data.iterdir())  # the workers' files stayed in their tmpfs

    requeued = next(e for e in events if e["kind"] == "requeued")
    reclaimed = [e for e in events if e["kind"] == "validating"][1]
    print(
        f"\nhost loss: cut at {0:.1f} s; requeued {_ts(requeued) - cut_at:.1f} s; claimed by "
        f"worker-{survivor} {_ts(reclaimed) - cut_at:.1f} s; resumed at step "
        f"{resumed['data']['step']} {_ts(resumed) - cut_at:.1f} s; succeeded "
        f"{succeeded_at - cut_at:.1f} s; attempts {done['attempt']}; link back, stale attempt "
        f"stopped after {stopped_at - succeeded_at:.1f} s:\n  {stopped.split('] ')[-1]}"
    )
