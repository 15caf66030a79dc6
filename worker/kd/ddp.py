"""One rank of a data parallel job: `torchrun ... -m worker.kd.ddp RUN_DIR`.

Each rank reads the job the worker checked and planned (`RUN_DIR/job.json`, see
worker.kd.rank_files), joins the process group torchrun set up (gloo on CPU, NCCL on GPU,
one GPU per rank), prepares the job as one process would (the planned spec makes it
deterministic: no rank plans its own budget) and trains through the one `Trainer`, which
splits each batch among the ranks (worker.kd.training.distributed). Rank 0 reports, writes
checkpoints, saves and measures the student, and writes `outcome.json`; the others only
train. Nothing here touches the database: the worker that launched torchrun does.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from worker.kd.engine import distill, prepare, resolve_device
from worker.kd.errors import Cancelled, KDError
from worker.kd.jobs import DistillResult
from worker.kd.rank_files import FileReporter, RunFiles, SilentReporter
from worker.kd.spec import JobSpec
from worker.kd.training.checkpoint import Checkpointing
from worker.kd.training.distributed import PeerLost, Ranks
from worker.kd.training.reporting import Reporter
from worker.kd.training.teacher_cache import TeacherCache

PR_SET_PDEATHSIG = 1  # prctl(2)


def run_rank(files: RunFiles, job: dict[str, Any], reporter: Reporter) -> DistillResult:
    """Prepare and distil the job on this rank (in its process group already)."""
    spec = JobSpec.model_validate(job["spec"])
    inputs = {role: None if p is None else Path(p) for role, p in job["inputs"].items()}
    teacher = inputs["teacher"]
    assert teacher is not None
    prepared = prepare(
        spec, teacher, inputs.get("dataset"), inputs.get("student"), job["max_student_params"]
    )
    checkpoint = job["checkpoint"]
    checkpointing = (
        None
        if checkpoint is None
        else Checkpointing(Path(checkpoint["path"]), int(checkpoint["every_steps"]))
    )
    cache = None
    shared = job["teacher_cache"]
    if shared is not None and Ranks.current().leader:  # one writer of the shared cache
        cache = TeacherCache(Path(shared["dir"]), int(shared["bytes"]))
    return distill(prepared, Path(job["out_dir"]), reporter, checkpointing, cache)


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when torchrun (its parent) dies, however it dies."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main(run_dir: str) -> int:
    die_with_parent()
    files = RunFiles(Path(run_dir))
    files.pid_file(int(os.environ.get("RANK", "0"))).write_text(str(os.getpid()))
    job = json.loads(files.job.read_text())
    device = resolve_device(JobSpec.model_validate(job["spec"]).training.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ranks = Ranks.current()
    reporter: FileReporter | SilentReporter = (
        FileReporter(files, job.get("launcher_pid")) if ranks.leader else SilentReporter()
    )
    try:
        result = run_rank(files, job, reporter)
        if ranks.leader:
            artifacts = {name: str(path) for name, path in result.artifacts.items()}
            files.write_outcome("succeeded", report=result.report, artifacts=artifacts)
    except Cancelled:
        if ranks.leader:
            files.write_outcome("stopped")
    except KDError as exc:
        if ranks.leader:
            files.write_outcome("failed", code=exc.code, message=exc.message)
    except (PeerLost, dist.DistError):
        raise  # a peer died: no outcome, so the worker takes the attempt as lost
    except Exception as exc:
        if ranks.leader:
            traceback.print_exc()
            files.write_outcome("error", type=type(exc).__name__, message=str(exc)[:300])
        raise
    finally:
        if isinstance(reporter, FileReporter):
            reporter.close()
    # The ranks leave together: a rank that tore gloo down while the leader was still
    # saving and measuring aborted once ("terminate called without an active exception"),
    # and torchrun then stopped the leader before it wrote the outcome.
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
