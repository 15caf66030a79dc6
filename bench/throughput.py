"""Section 7: jobs per minute with one and with two CPU workers.

Stacks, all started at once and driven in turn (the embedded setup: one SQLite database
and its queue, files on disk, one API process, and real `python -m app.cli worker`
processes):

- `1 worker`, `2 workers`: one or two workers, each told to use one torch thread
  (OMP_NUM_THREADS=1 and MKL_NUM_THREADS=1 in its environment: torch sizes its intra-op
  pool from them), so two workers on two cores do not oversubscribe them;
- `1 worker, 2 threads`: one worker with torch's default, one thread per core (2 here):
  what one worker makes of the same two cores.

Each round submits a batch of the same small real job to each stack in turn (the order
rotated each round) and waits for the batch: a TorchScript MLP teacher (trained here for a
second) distilled into a smaller MLP on the builtin digits, with an explicit short
training (`epochs`, `batch_size`). A batch's time runs from the first job's `created_at`
to the last one's `finished_at` (the server's clocks), so jobs per minute = batch /
that time. Also the median time a job spends from `started_at` to `finished_at` (what
two workers sharing two cores cost each job) and the CPU seconds of the stack's
processes per job. Each worker runs a warm-up job first (its first job imports torch).

Run: .venv/bin/python -m bench.throughput [--quick] [--jobs 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
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
    paired_ratio,
    rng,
    rotate,
    run_section,
    section_parser,
    x,
)

TERMINAL = {"succeeded", "failed", "cancelled"}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# name: (workers, environment of each worker)
STACKS: dict[str, tuple[int, dict[str, str]]] = {
    "1 worker": (1, ONE_THREAD),
    "2 workers": (2, ONE_THREAD),
    "1 worker, 2 threads": (1, {}),
}


def digits_teacher(path: Path) -> Path:
    """A small MLP on the (N, 1, 8, 8) digits, trained for a second, as TorchScript."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(teacher.parameters(), lr=0.01)
    for _ in range(100):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(teacher(x), y).backward()
        optimizer.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(teacher.eval()).save(str(path))
    return path


def job_spec(teacher: str, epochs: int) -> dict[str, Any]:
    return {
        "teacher": {"file_id": teacher},
        "student": {"arch": "mlp", "hidden": [32]},
        "dataset": {"builtin": "digits"},
        "training": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.01, "seed": 0},
    }


@dataclass
class Stack:
    name: str
    base: str
    key: str
    pids: list[int]
    spec: dict[str, Any] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.key}"}
        return httpx.Client(base_url=self.base, headers=auth, timeout=60)

    def cpu_seconds(self) -> float:
        return sum(servers.cpu_seconds(pid) for pid in self.pids)

    def run_batch(self, n: int, timeout: float = 600) -> dict[str, Any]:
        """Submit `n` jobs at once, wait for all of them; their timings."""
        cpu_before = self.cpu_seconds()
        with self.client() as client:
            ids = []
            for _ in range(n):
                response = client.post("/v1/jobs", json=self.spec)
                response.raise_for_status()
                ids.append(response.json()["id"])
            deadline = time.monotonic() + timeout
            jobs: dict[str, dict[str, Any]] = {}
            while len(jobs) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: jobs still running after {timeout} s")
                time.sleep(0.25)
                for job_id in ids:
                    if job_id not in jobs:
                        job = client.get(f"/v1/jobs/{job_id}").json()
                        if job["status"] in TERMINAL:
                            jobs[job_id] = job
        done = list(jobs.values())
        failed = [j for j in done if j["status"] != "succeeded"]
        if failed:
            raise RuntimeError(f"{self.name}: {len(failed)} jobs ended badly: {failed[0]}")
        first = min(servers.parse_ts(j["created_at"]) for j in done)
        last = max(servers.parse_ts(j["finished_at"]) for j in done)
        seconds = (last - first).total_seconds()
        runs = [
            (servers.parse_ts(j["finished_at"]) - servers.parse_ts(j["started_at"])).total_seconds()
            for j in done
        ]
        return {
            "jobs": n,
            "seconds": seconds,
            "jobs_per_minute": 60 * n / seconds,
            "job_run_s_median": median(runs),
            "cpu_s_per_job": (self.cpu_seconds() - cpu_before) / n,
        }


def start_stack(
    procs: servers.Processes, work: Path, name: str, index: int, teacher_path: Path, epochs: int
) -> Stack:
    workers, worker_env = STACKS[name]
    data_dir = work / f"stack{index}"
    seeded = servers.seed(servers.sqlite_url(data_dir), 0)
    base, api = servers.start_api(procs, f"api{index}", data_dir)
    pids = [api.pid]
    for w in range(workers):
        worker = servers.start_worker(procs, f"worker{index}-{w}", data_dir, None, **worker_env)
        pids.append(worker.pid)
    servers.wait_up(base, procs, "/readyz", timeout=120)
    teacher = servers.upload(base, seeded.key, teacher_path, "teacher")
    return Stack(name, base, seeded.key, pids, job_spec(teacher, epochs))


def measure(args: argparse.Namespace) -> Result:
    jobs, rounds = (4, 2) if args.quick else (args.jobs, args.rounds)
    load = LoadMeter()
    with (
        tempfile.TemporaryDirectory(dir=args.work) as tmp,
        servers.processes(Path(tmp) / "logs") as procs,
    ):
        work = Path(tmp)
        teacher_path = digits_teacher(work / "files" / "digits-mlp-teacher.pt")
        stacks = [
            start_stack(procs, work, name, i, teacher_path, args.epochs)
            for i, name in enumerate(STACKS)
        ]
        # A job per worker first: a worker's first job imports torch, and is not measured.
        for stack in stacks:
            warm = stack.run_batch(STACKS[stack.name][0])
            log(f"  {stack.name}: warm-up, a job runs {warm['job_run_s_median']:.1f} s")
        batches: dict[str, list[dict[str, Any]]] = {s.name: [] for s in stacks}
        for r in range(rounds):
            for stack in rotate(stacks, r):
                batches[stack.name].append(stack.run_batch(jobs))
            log(
                f"  round {r + 1}/{rounds}: "
                + ", ".join(
                    f"{n} {b[-1]['jobs_per_minute']:.1f} jobs/min" for n, b in batches.items()
                )
            )

    def per_minute(name: str) -> list[float]:
        return [b["jobs_per_minute"] for b in batches[name]]

    return {
        "quick": args.quick,
        "jobs_per_batch": jobs,
        "rounds": rounds,
        "epochs": args.epochs,
        "stacks": {
            name: {
                "workers": STACKS[name][0],
                "worker_env": STACKS[name][1],
                "jobs_per_minute": median(per_minute(name)),
                "job_run_s_median": median([b["job_run_s_median"] for b in runs]),
                "cpu_s_per_job": median([b["cpu_s_per_job"] for b in runs]),
                "batches": runs,
            }
            for name, runs in batches.items()
        },
        "scaling": paired_ratio(per_minute("2 workers"), per_minute("1 worker")),
        "two_workers_over_two_threads": paired_ratio(
            per_minute("2 workers"), per_minute("1 worker, 2 threads")
        ),
        "load": load.stop(),
    }


def rows(r: Result) -> list[Table]:
    header = [
        "stack",
        "workers",
        "jobs per minute (median)",
        "a job runs (median)",
        "CPU s per job",
    ]
    table_rows = [
        [
            name,
            str(s["workers"]),
            f"{s['jobs_per_minute']:.1f}",
            f"{s['job_run_s_median']:.2f} s",
            f"{s['cpu_s_per_job']:.2f}",
        ]
        for name, s in r["stacks"].items()
    ]
    scaling, versus = r["scaling"], r["two_workers_over_two_threads"]
    note = (
        f"- Scaling, 2 workers / 1 worker (one torch thread each): **{scaling['median']:.2f}x**"
        f"{rng(scaling)}, on a machine with 2 cores (2.00x is the most two workers can give)."
        f"\n- 2 workers / 1 worker with 2 torch threads: {versus['median']:.2f}x{rng(versus)}."
        f"\n\n{r['jobs_per_batch']} jobs per batch ({r['epochs']} epochs on the builtin digits, "
        f"an MLP student), {r['rounds']} rounds, stacks interleaved; CPU s per job counts the "
        "stack's API and workers."
    )
    return [Table(header, table_rows, note=note)]


def targets(r: Result) -> list[Row]:
    return [
        [
            "7. jobs per minute, 2 CPU workers / 1 (2 cores)",
            "-",
            x(r["scaling"]["median"]),
            "",
        ]
    ]


def parser() -> argparse.ArgumentParser:
    options = section_parser(__doc__ or "")
    options.add_argument("--jobs", type=int, default=8, help="jobs per batch")
    options.add_argument("--rounds", type=int, default=3)
    options.add_argument("--epochs", type=int, default=10, help="each job's training epochs")
    return options


if __name__ == "__main__":
    run_section("throughput", measure, parser())
