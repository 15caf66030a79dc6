"""The kept-aside kind of task through the real service (issue 11): defaults only, then
`"search": {"budget_seconds": S}`, each with `"baseline": true`.

It starts `distillery up` (the embedded default: SQLite, one worker) in a temporary data
dir, uploads a suite task's teacher and transfer set (`bench.suite_tasks`, the test set as
`x_val`, so the selection split is carved from the transfer set and the report's
accuracies are on data nothing chose on), submits a job that names only teacher, student
and dataset, then the same job with a search, and keeps what the reports say.

Run: .venv/bin/python -m bench.suite_search [--task motif] [--budget 900] [--seed 0]
     [--cache DIR] [--out bench/results/suite_search.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.suite import TASKS, build_files, task_files

TERMINAL = {"succeeded", "failed", "cancelled"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key(log: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("dk_"):
                return line.strip()
        time.sleep(0.5)
    raise SystemExit(f"`distillery up` printed no key:\n{log.read_text()}")


def _ready(base: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the service did not become ready")


def run_job(client: httpx.Client, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Submit, wait for the end, and return the job, its report and its trials."""
    response = client.post("/v1/jobs", json=spec)
    response.raise_for_status()
    job = response.json()
    started = time.monotonic()
    while job["status"] not in TERMINAL:
        if time.monotonic() - started > timeout:
            raise SystemExit(f"job {job['id']} still {job['status']} after {timeout:.0f} s")
        time.sleep(3)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    out: dict[str, Any] = {"job": job, "wall_seconds": time.monotonic() - started}
    if job["status"] == "succeeded":
        out["report"] = client.get(f"/v1/jobs/{job['id']}/report").json()
    if "search" in spec:
        out["trials"] = client.get(f"/v1/jobs/{job['id']}/trials").json()["data"]
    return out


def summary(run: dict[str, Any]) -> dict[str, Any]:
    report = run.get("report") or {}
    baseline = report.get("baseline") or {}
    return {
        "status": run["job"]["status"],
        "error": run["job"].get("error"),
        "wall_seconds": round(run["wall_seconds"], 1),
        "teacher": (report.get("teacher") or {}).get("accuracy"),
        "student": (report.get("student") or {}).get("accuracy"),
        "baseline": baseline.get("accuracy"),
        "kd_gain": report.get("kd_gain"),
        "verdict": report.get("verdict"),
        "evaluation": report.get("evaluation"),
        "search": report.get("search"),
        "trials": run.get("trials"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="motif", help="a word in the suite task's name")
    parser.add_argument("--budget", type=int, default=900, help="search.budget_seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="teachers and data from bench.suite --cache")
    parser.add_argument("--out", type=Path, default=Path("bench/results/suite_search.json"))
    args = parser.parse_args()
    index = next(i for i, (_, task) in enumerate(TASKS) if args.task in task.name)
    split, task = TASKS[index]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_files(index, root, args.cache)
        files = task_files(root, index)
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
        env.update(PYTHONUNBUFFERED="1", DISTILLERY_CLIENT_CONFIG=str(root / "client.json"))
        log = root / "up.log"
        with log.open("wb") as handle:
            up = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "up", "--data-dir", str(root / "data"),
                 "--port", str(port)],
                env=env, stdout=handle, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            key = _key(log)
            base = f"http://127.0.0.1:{port}"
            _ready(base)
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
                ids = {}
                for purpose, path in (("teacher", files.teacher), ("dataset", files.data)):
                    with path.open("rb") as f:
                        response = client.post(
                            "/v1/files", data={"purpose": purpose}, files={"file": (path.name, f)}
                        )
                    response.raise_for_status()
                    ids[purpose] = response.json()["id"]
                spec: dict[str, Any] = {
                    "teacher": {"file_id": ids["teacher"]},
                    "dataset": {"file_id": ids["dataset"]},
                    "student": task.student,
                    "training": {"seed": args.seed},
                    "baseline": True,
                }
                started = time.monotonic()
                defaults = run_job(client, spec, timeout=3600)
                print("defaults:", json.dumps(summary(defaults))[:400], flush=True)
                searched = run_job(
                    client, {**spec, "search": {"budget_seconds": args.budget}},
                    timeout=args.budget * 3 + 600,
                )  # fmt: skip
                print("search:", json.dumps(summary(searched))[:400], flush=True)
        finally:
            up.terminate()
            try:
                up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                up.kill()
    result = {
        "section": "suite_search", "task": task.name, "split": split, "seed": args.seed,
        "search_budget_seconds": args.budget, "seconds": time.monotonic() - started,
        "load_average": os.getloadavg(),
        "defaults": summary(defaults), "search": summary(searched),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
