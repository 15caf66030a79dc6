"""The files through which a data parallel job's ranks and the worker that launched them
talk (torch-free: the launcher imports it without loading torch).

The worker keeps everything that needs the database (lease, heartbeat, cancel, the writes
of progress, metrics and events, artifacts and the job's end) in its own process, and
starts the ranks with torchrun on an engine entry (`python -m worker.kd.ddp RUN_DIR`) that
knows nothing of the database. One directory per attempt holds:

- `job.json`: the job as the worker checked and planned it (the spec with its planned
  training, the input files, the checkpoint, the teacher cache), written before launch;
- `reports.jsonl`: rank 0's progress, metrics and events, one JSON object a line, which
  the worker relays to its reporter (so the database sees one writer, as for one process);
- `stop`: written by the worker when the job is asked to stop (cancel, shutdown, time
  limit, a trial pruned); rank 0 reads it and every rank stops at the same step, after
  rank 0 saved a checkpoint;
- `outcome.json`: rank 0's last word: `succeeded` (report and artifact files), `stopped`,
  `failed` (a KDError: code and message) or `error` (anything else). No outcome after the
  ranks ended means a rank died: the attempt is lost and the job resumes from its
  checkpoint, as after a lost worker.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

OutcomeStatus = Literal["succeeded", "stopped", "failed", "error"]


@dataclass(frozen=True)
class RunFiles:
    """The files of one attempt's ranks, in `root`."""

    root: Path

    @property
    def job(self) -> Path:
        return self.root / "job.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports.jsonl"

    @property
    def stop(self) -> Path:
        return self.root / "stop"

    @property
    def outcome(self) -> Path:
        return self.root / "outcome.json"

    @property
    def log(self) -> Path:
        return self.root / "torchrun.log"

    def pid_file(self, rank: int) -> Path:
        return self.root / f"rank-{rank}.pid"

    def rank_pids(self) -> list[int]:
        """The pids the ranks wrote when they started."""
        return [int(p.read_text()) for p in sorted(self.root.glob("rank-*.pid"))]

    def write_outcome(self, status: OutcomeStatus, **data: Any) -> None:
        write_json_atomically(self.outcome, {"status": status, **data})

    def read_outcome(self) -> dict[str, Any] | None:
        if not self.outcome.exists():
            return None
        outcome: dict[str, Any] = json.loads(self.outcome.read_text())
        return outcome


def job_description(
    spec: dict[str, Any],
    inputs: dict[str, Path | None],
    out_dir: Path,
    checkpoint: tuple[Path, int] | None,
    max_student_params: int | None = None,
    teacher_cache: tuple[Path, int] | None = None,
) -> dict[str, Any]:
    """What `job.json` holds: `spec` with its training planned, the `teacher`, `dataset`
    and `student` files (`inputs`), where to write files and the checkpoint (path, every
    steps), and the shared teacher cache (directory, bytes) that rank 0 may use."""

    def text(path: Path | None) -> str | None:
        return None if path is None else str(path)

    return {
        "spec": spec,
        "inputs": {role: text(path) for role, path in inputs.items()},
        "out_dir": str(out_dir),
        "checkpoint": None
        if checkpoint is None
        else {"path": str(checkpoint[0]), "every_steps": checkpoint[1]},
        "max_student_params": max_student_params,
        "teacher_cache": None
        if teacher_cache is None
        else {"dir": str(teacher_cache[0]), "bytes": teacher_cache[1]},
    }


def write_json_atomically(path: Path, value: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value))
    os.replace(partial, path)


class FileReporter:
    """Rank 0's Reporter: each report is one line of `reports.jsonl`, written at once (the
    worker rate-limits the database writes); a stop is asked for by the `stop` file, or by
    the worker's death (`launcher_pid` gone), looked for at most every `poll_seconds`."""

    def __init__(
        self, files: RunFiles, launcher_pid: int | None = None, poll_seconds: float = 0.1
    ) -> None:
        self.files = files
        self.launcher_pid = launcher_pid
        self.poll_seconds = poll_seconds
        self._out = files.reports.open("a", buffering=1)  # line-buffered: one write a report
        self._last_poll = 0.0
        self._stop = False

    def _write(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record) + "\n")

    def progress(self, fraction: float, *, epoch: int, step: int) -> None:
        self._write({"type": "progress", "fraction": fraction, "epoch": epoch, "step": step})

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
        self._write(
            {"type": "metric", "name": name, "value": float(value), "step": step, "epoch": epoch}
        )

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self._write({"type": "event", "kind": kind, "message": message, "data": data or {}})

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last_poll >= self.poll_seconds:
            self._last_poll = now
            self._stop = self.files.stop.exists() or not self._launcher_alive()
        return self._stop

    def _launcher_alive(self) -> bool:
        if self.launcher_pid is None:
            return True
        try:
            os.kill(self.launcher_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        return True

    def close(self) -> None:
        self._out.close()


class SilentReporter:
    """The Reporter of ranks other than 0: they train and say nothing (rank 0 decides when
    to stop, and the loop tells them)."""

    def progress(self, fraction: float, *, epoch: int, step: int) -> None:
        pass

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
        pass

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        pass

    def should_stop(self) -> bool:
        return False
