"""`distillery worker --threads N` (or DISTILLERY_WORKER_THREADS) caps training's CPU threads
before torch loads: several workers on one machine then share its cores (BENCHMARKS.md,
section 7: a worker at torch's default threads on a busy 2-core machine used 13x the CPU
per job)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from typer.testing import CliRunner
    from app.cli import cli
    from worker.celery_app import celery_app

    def run_job_instead(argv):  # what a job would see: torch loads after the worker starts
        import torch
        print("threads", os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads())
        print("argv", " ".join(argv))

    celery_app.worker_main = run_job_instead
    result = CliRunner().invoke(cli, ["worker", *sys.argv[1:]])
    print(result.output, end="")
    sys.exit(result.exit_code)
    """
)


def _worker(*args: str, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_threads_option_caps_torch_threads() -> None:
    out = _worker("--threads", "1")
    assert "threads 1 1" in out
    assert "--pool=solo" in out


def test_the_setting_applies_without_the_option() -> None:
    assert "threads 1 1" in _worker(env={"DISTILLERY_WORKER_THREADS": "1"})


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to tell the default apart")
def test_zero_leaves_torch_its_default() -> None:
    out = _worker("--threads", "0")
    line = next(part for part in out.splitlines() if part.startswith("threads"))
    assert line.split()[1] == "None"
    assert int(line.split()[2]) >= 2
