"""Section 3: submit-to-running latency, Redis broker vs the embedded SQLite broker.

Stacks, all started at once and driven in turn (one API process and one real
`python -m app.cli worker` each, SQLite databases, files on disk):

- `sqlite`: the embedded default (kombu's SQLAlchemy transport over SQLite, polling the
  queue table every DISTILLERY_BROKER_POLL_SECONDS, default 0.1 s);
- `redis`: the same with DISTILLERY_BROKER_URL=redis://127.0.0.1:6379 (a queue name of
  this run's own, so nothing else's jobs are touched);
- `sqlite, poll 1 s`: the same with DISTILLERY_BROKER_POLL_SECONDS=1.0 (kombu's own
  default), to price the setting both ways.

A tiny job each time (a 2-layer MLP teacher, 256 samples, 1 epoch), submitted after a
random pause (so submissions fall anywhere in a polling cycle), then waited for. From the
job's events: `created_at` (the API) to the `validating` event (the worker claimed it:
the queue's share) and to the `running` event (inputs checked, training starts) [median on
Redis <= 0.2 s]. Then every worker idles for a while and its CPU use is read from /proc:
the price of polling an empty queue.

Run: .venv/bin/python -m bench.queue_latency [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from torch import nn

from bench import servers
from bench.common import (
    LoadMeter,
    Result,
    Row,
    Table,
    log,
    median,
    percentile,
    rotate,
    run_section,
    section_parser,
    verdict,
)

TARGET_REDIS_S = 0.2
TERMINAL = {"succeeded", "failed", "cancelled"}


def tiny_job_files(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    teacher_path = folder / "tiny-teacher.pt"
    torch.jit.script(teacher).save(str(teacher_path))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=256)
    dataset_path = folder / "tiny.npz"
    np.savez(dataset_path, x=x, y=y)
    return teacher_path, dataset_path


def tiny_spec(teacher: str, dataset: str) -> dict[str, Any]:
    return {
        "teacher": {"file_id": teacher},
        "student": {"arch": "mlp", "hidden": [8]},
        "dataset": {"file_id": dataset},
        "training": {"epochs": 1, "batch_size": 64, "seed": 0},
    }


class Stack:
    def __init__(self, name: str, base: str, key: str, worker_pid: int) -> None:
        self.name = name
        self.base = base
        self.key = key
        self.worker_pid = worker_pid
        self.spec: dict[str, Any] = {}
        self.client = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def run_job(self, timeout: float = 120) -> dict[str, Any]:
        response = self.client.post("/v1/jobs", json=self.spec)
        response.raise_for_status()
        job = response.json()
        deadline = time.monotonic() + timeout
        while job["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: job {job['id']} still {job['status']}")
            time.sleep(0.05)
            job = self.client.get(f"/v1/jobs/{job['id']}").json()
        events = self.client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        created = servers.parse_ts(job["created_at"])
        at = {e["kind"]: servers.parse_ts(e["ts"]) for e in reversed(events)}
        return {
            "status": job["status"],
            "to_validating_s": (at["validating"] - created).total_seconds()
            if "validating" in at
            else None,
            "to_running_s": (at["running"] - created).total_seconds() if "running" in at else None,
        }


def measure(args: argparse.Namespace) -> Result:
    jobs, idle_s = (3, 4.0) if args.quick else (9, 10.0)
    rng = random.Random(0)
    load = LoadMeter()
    queue = f"bench-{os.getpid()}"
    with (
        tempfile.TemporaryDirectory(dir=args.work) as tmp,
        servers.processes(Path(tmp) / "logs") as procs,
    ):
        work = Path(tmp)
        teacher_path, dataset_path = tiny_job_files(work / "files")
        configs: dict[str, tuple[dict[str, str], list[str] | None]] = {
            "sqlite": ({}, None),
        }
        if servers.redis_available(args.redis):
            configs["redis"] = ({"DISTILLERY_BROKER_URL": args.redis}, None)
        configs["sqlite, poll 1 s"] = ({"DISTILLERY_BROKER_POLL_SECONDS": "1.0"}, None)
        stacks: list[Stack] = []
        for i, (name, (env, worker_args)) in enumerate(configs.items()):
            data_dir = work / f"stack{i}"
            seeded = servers.seed(servers.sqlite_url(data_dir), 0)
            env = {"DISTILLERY_QUEUE": queue, **env}
            base, _ = servers.start_api(procs, f"api{i}", data_dir, **env)
            worker = servers.start_worker(procs, f"worker{i}", data_dir, worker_args, **env)
            stacks.append(Stack(name, base, seeded.key, worker.pid))
        for stack in stacks:
            servers.wait_up(stack.base, procs, "/readyz", timeout=120)
            teacher = servers.upload(stack.base, stack.key, teacher_path, "teacher")
            dataset = servers.upload(stack.base, stack.key, dataset_path, "dataset")
            stack.spec = tiny_spec(teacher, dataset)
            warm = stack.run_job()  # the worker's first job imports torch: not measured
            log(f"  {stack.name}: warm-up job {warm['status']}")
        samples: dict[str, list[dict[str, Any]]] = {s.name: [] for s in stacks}
        for i in range(jobs):
            for stack in rotate(stacks, i):
                time.sleep(rng.uniform(0.0, 1.0))
                samples[stack.name].append(stack.run_job())
            log(
                f"  round {i + 1}/{jobs}: "
                + ", ".join(
                    f"{s.name} {samples[s.name][-1]['to_running_s'] or float('nan'):.3f} s"
                    for s in stacks
                )
            )
        log(f"  idle {idle_s:.0f} s: worker CPU while the queue is empty")
        before = {s.name: servers.cpu_seconds(s.worker_pid) for s in stacks}
        time.sleep(idle_s)
        idle = {
            s.name: 100 * (servers.cpu_seconds(s.worker_pid) - before[s.name]) / idle_s
            for s in stacks
        }
        for stack in stacks:
            stack.client.close()
    results: dict[str, Any] = {}
    for name, runs in samples.items():
        running = [r["to_running_s"] for r in runs if r["to_running_s"] is not None]
        claimed = [r["to_validating_s"] for r in runs if r["to_validating_s"] is not None]
        results[name] = {
            "jobs": len(runs),
            "failed": sum(1 for r in runs if r["status"] != "succeeded"),
            "to_running_median_s": median(running),
            "to_running_p90_s": percentile(running, 90),
            "to_running_max_s": max(running) if running else None,
            "to_validating_median_s": median(claimed),
            "to_validating_max_s": max(claimed) if claimed else None,
            "idle_worker_cpu_pct": idle[name],
            "samples": runs,
        }
    redis = results.get("redis")
    return {
        "quick": args.quick,
        "jobs_per_stack": jobs,
        "idle_seconds": idle_s,
        "target_redis_median_s": TARGET_REDIS_S,
        "met": None if redis is None else redis["to_running_median_s"] <= TARGET_REDIS_S,
        "stacks": results,
        "load": load.stop(),
    }


def rows(r: Result) -> list[Table]:
    header = [
        "broker",
        "jobs",
        "to claimed (validating), median",
        "to running, median",
        "p90",
        "max",
        "idle worker CPU",
    ]
    stack_rows = [
        [
            name,
            str(s["jobs"]),
            f"{s['to_validating_median_s']:.3f} s",
            f"{s['to_running_median_s']:.3f} s",
            f"{s['to_running_p90_s']:.3f} s",
            f"{s['to_running_max_s']:.3f} s",
            f"{s['idle_worker_cpu_pct']:.2f}%",
        ]
        for name, s in r["stacks"].items()
    ]
    note = (
        f"Target: median to running on Redis <= {r['target_redis_median_s']} s: "
        f"{verdict(r['met'])}. Idle CPU measured over {r['idle_seconds']:g} s with an empty "
        "queue (one core = 100%)."
    )
    return [Table(header, stack_rows, note=note)]


def targets(r: Result) -> list[Row]:
    if "redis" not in r["stacks"]:
        return []
    return [
        [
            "3. submit -> running, median, Redis",
            f"<= {r['target_redis_median_s']} s",
            f"{r['stacks']['redis']['to_running_median_s']:.3f} s",
            verdict(r["met"]),
        ]
    ]


def parser() -> argparse.ArgumentParser:
    options = section_parser(__doc__ or "")
    options.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    return options


if __name__ == "__main__":
    run_section("queue", measure, parser())
