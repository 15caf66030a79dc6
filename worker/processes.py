"""A job on several processes (`resources.processes` > 1): the worker launches torchrun.

The worker process keeps what it does for one process: the claim, the lease (its heartbeat
thread), cancel and shutdown checks, every database write, storing the artifacts and the
job's end. torchrun (`--standalone`, one node, `--max-restarts 0`) runs the ranks in a
session of their own, so a signal to the worker (a deploy's SIGTERM) does not reach them
and the worker stops them on its own terms. The ranks run the engine only
(`python -m worker.kd.ddp RUN_DIR`) and talk to the worker through files
(worker.kd.rank_files): rank 0's reports are relayed to the job's reporter as they come, a
stop request becomes a `stop` file that every rank obeys at the same step after rank 0
checkpointed, and rank 0's outcome says how the attempt ended. When a rank dies, torchrun
ends the others and exits non-zero without an outcome: the attempt is lost (`RankLost`)
and the job resumes from its checkpoint like a job whose worker was lost. No rank outlives
the call: on the way out every rank's session and torchrun's are killed (torchrun starts
each rank in a session of its own; ranks write their pids). A rank also dies with
torchrun (Linux: parent-death signal), and rank 0 stops the job after a checkpoint when
the worker itself is gone (killed), so that another worker resumes it.

The rendezvous is torchrun's c10d store on a free port of this machine, and the address
the ranks meet at (their MASTER_ADDR) is 127.0.0.1 (`--local-addr`), so it never depends
on how the host name resolves; gloo is told to use the loopback interface unless the
environment names another (GLOO_SOCKET_IFNAME).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from worker.kd.errors import Cancelled, KDError
from worker.kd.rank_files import RunFiles, write_json_atomically
from worker.kd.training.reporting import Reporter

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often the worker relays reports and looks at the ranks
STOP_GRACE_SECONDS = 60.0  # after a stop request, how long the ranks have to checkpoint


class RankLost(Exception):
    """A rank of the job died (killed, out of memory, its peer gone): the attempt is lost."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RankFailed(KDError):
    """Rank 0 ended the job with an engine error: its code and message are the job's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def torchrun_command(processes: int, run_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", "--nnodes", "1", "--nproc-per-node", str(processes),
        "--max-restarts", "0", "--local-addr", "127.0.0.1",
        "-m", "worker.kd.ddp", str(run_dir),
    ]  # fmt: skip


def rank_environment() -> dict[str, str]:
    env = dict(os.environ)
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def run_on_processes(
    processes: int,
    job: dict[str, Any],
    run_dir: Path,
    reporter: Reporter,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Train the job described by `job` (worker.kd.ddp.job_description) on `processes`
    ranks; the report and the artifact files of a job that succeeded. Raises `Cancelled`
    when it stopped on request, a KDError when rank 0 failed it, `RankLost` when a rank
    died."""
    files = RunFiles(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(files.job, {**job, "launcher_pid": os.getpid()})
    files.reports.touch()
    with files.log.open("ab") as log_file:
        ranks = subprocess.Popen(
            torchrun_command(processes, run_dir),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=rank_environment(),
            start_new_session=True,  # its own process group: signalled and killed as one
        )
    try:
        _watch(ranks, files, reporter)
    finally:
        _kill_all(ranks, files)
    return _outcome(ranks.returncode, files)


def _watch(ranks: subprocess.Popen[bytes], files: RunFiles, reporter: Reporter) -> None:
    """Relay rank 0's reports until the ranks end; on a stop request, tell them, and kill
    them if they have not ended `STOP_GRACE_SECONDS` later."""
    relay = Relay(files.reports, reporter)
    stop_asked: float | None = None
    while ranks.poll() is None:
        relay.pump()
        if stop_asked is None and reporter.should_stop():
            files.stop.write_text("stop\n")
            stop_asked = time.monotonic()
        if stop_asked is not None and time.monotonic() - stop_asked > STOP_GRACE_SECONDS:
            log.warning("ranks did not stop within %.0f s; killing them", STOP_GRACE_SECONDS)
            _kill_all(ranks, files)
            break
        time.sleep(POLL_SECONDS)
    relay.pump()


def _kill_all(torchrun: subprocess.Popen[bytes], files: RunFiles) -> None:
    """SIGKILL every rank's session (torchrun starts each rank in a session of its own)
    and torchrun's, and reap torchrun. A no-op for processes that have ended."""
    for pid in [*files.rank_pids(), torchrun.pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    torchrun.wait()


def _outcome(returncode: int, files: RunFiles) -> tuple[dict[str, Any], dict[str, Path]]:
    outcome = files.read_outcome()
    if outcome is None:
        raise RankLost(
            f"A training process of the job ended without finishing (torchrun exit "
            f"{returncode}): {_last_error(files.log)}"
        )
    status = outcome["status"]
    if status == "succeeded":
        artifacts = {name: Path(path) for name, path in outcome["artifacts"].items()}
        return outcome["report"], artifacts
    if status == "stopped":
        raise Cancelled()
    if status == "failed":
        raise RankFailed(outcome["code"], outcome["message"])
    raise RuntimeError(f"rank 0: {outcome['type']}: {outcome['message']}")


def _last_error(log_path: Path) -> str:
    """torchrun's own summary of the failure (which rank, which exit code or signal)."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    wanted = [" ".join(line.split()) for line in lines if "exitcode" in line or "Signal" in line]
    return "; ".join(wanted[-3:])[:400] or "no error was recorded"


class Relay:
    """Forwards the complete lines of rank 0's `reports.jsonl` to the job's reporter."""

    def __init__(self, path: Path, reporter: Reporter) -> None:
        self.path = path
        self.reporter = reporter
        self.offset = 0

    def pump(self) -> None:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            self._forward(json.loads(line))

    def _forward(self, record: dict[str, Any]) -> None:
        kind = record.pop("type")
        if kind == "progress":
            self.reporter.progress(record["fraction"], epoch=record["epoch"], step=record["step"])
        elif kind == "metric":
            self.reporter.metric(
                record["name"], record["value"], step=record["step"], epoch=record["epoch"]
            )
        else:
            self.reporter.event(record["kind"], record["message"], record["data"])
