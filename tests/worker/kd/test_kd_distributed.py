"""Data parallel training (`resources.processes`): real torchrun, two gloo ranks on CPU,
launched the way the worker launches them (worker.processes), against one process."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.worker.kd.conftest import job_spec
from worker.kd.engine import distill, prepare
from worker.kd.errors import Cancelled
from worker.kd.rank_files import RunFiles, job_description
from worker.kd.spec import JobSpec
from worker.kd.training.distributed import WHOLE, Ranks
from worker.kd.training.reporting import MemoryReporter
from worker.processes import RankFailed, RankLost, run_on_processes

RECIPE = {"temperature": 4.0, "alpha": 0.9, "augment": {"mixup": 0.4, "noise": 0.05}}
TRAINING = {"epochs": 4, "batch_size": 64, "learning_rate": 1e-2, "seed": 0, "device": "cpu"}


def spec(processes: int) -> JobSpec:
    sections: dict[str, Any] = {"baseline": True, "resources": {"processes": processes}}
    return job_spec(distillation=RECIPE, training=TRAINING, **sections)


@dataclass
class Launch:
    teacher: Path
    dataset: Path
    root: Path
    checkpoint: Path = field(init=False)

    def __post_init__(self) -> None:
        self.checkpoint = self.root / "checkpoints" / "checkpoint.pt"

    def run(self, reporter: MemoryReporter, attempt: str) -> tuple[dict[str, Any], Any]:
        planned = prepare(spec(2), self.teacher, self.dataset).spec
        job = job_description(
            planned.model_dump(mode="json"),
            {"teacher": self.teacher, "dataset": self.dataset},
            self.root / attempt,
            (self.checkpoint, 5),
        )
        return run_on_processes(2, job, self.root / attempt / "ranks", reporter)


def per_epoch(reporter: MemoryReporter, name: str) -> list[float]:
    return [value for metric, value, _, _ in reporter.metrics if metric == name]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def one_process(
    teacher_path: Path, digits_npz: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[MemoryReporter, dict[str, Any]]:
    reporter = MemoryReporter()
    out = tmp_path_factory.mktemp("one")
    result = distill(prepare(spec(1), teacher_path, digits_npz), out, reporter)
    return reporter, result.report


@pytest.fixture(scope="module")
def two_processes(
    teacher_path: Path, digits_npz: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[MemoryReporter, dict[str, Any], Launch]:
    launch = Launch(teacher_path, digits_npz, tmp_path_factory.mktemp("two"))
    reporter = MemoryReporter()
    report, _ = launch.run(reporter, "first")
    return reporter, report, launch


def test_a_batch_is_split_among_ranks_and_weighted_to_its_mean() -> None:
    for batch in (64, 65, 67, 7):
        parts = [Ranks(rank, 3).share(batch) for rank in range(3)]
        covered = [i for part, _ in parts for i in range(batch)[part]]
        assert covered == list(range(batch))
        assert sum(weight for _, weight in parts) / 3 == pytest.approx(1.0)
    assert Ranks(1, 4).share(7) == (WHOLE, 1.0)  # fewer than 2 examples a rank: all train all
    assert Ranks().share(64) == (WHOLE, 1.0)


def test_processes_are_bounded_and_for_tensor_jobs_only() -> None:
    assert spec(1).resources.processes == 1
    for bad in (0, 17):
        with pytest.raises(ValidationError, match="processes"):
            spec(bad)
    with pytest.raises(ValidationError, match=r"resources\.processes > 1 applies to tensor"):
        JobSpec.model_validate({
            "teacher": {"file_id": "t"}, "student": {"arch": "from_teacher", "num_layers": 2},
            "dataset": {"file_id": "d"}, "resources": {"processes": 2},
        })  # fmt: skip


def test_two_processes_follow_one_with_the_same_seed_and_batch(
    one_process: tuple[MemoryReporter, dict[str, Any]],
    two_processes: tuple[MemoryReporter, dict[str, Any], Launch],
) -> None:
    (one, one_report), (two, two_report, _) = one_process, two_processes
    for name in ("train_loss_epoch", "baseline_train_loss_epoch"):
        single, double = per_epoch(one, name), per_epoch(two, name)
        assert len(single) == len(double) == TRAINING["epochs"]
        for a, b in zip(single, double, strict=True):
            assert b == pytest.approx(a, rel=0.05)
    assert abs(two_report["student"]["accuracy"] - one_report["student"]["accuracy"]) <= 0.02
    assert abs(two_report["baseline"]["accuracy"] - one_report["baseline"]["accuracy"]) <= 0.02
    assert (one_report["processes"], two_report["processes"]) == (1, 2)
    # Rank 0 alone reports: each epoch's end once, as for one process.
    assert [e[0] for e in two.events].count("epoch_end") == TRAINING["epochs"]


class StopAfterEpoch(MemoryReporter):
    """Asks to stop once the first epoch's loss came in (a cancel, as the worker sees it)."""

    def should_stop(self) -> bool:
        return bool(per_epoch(self, "train_loss_epoch"))


def test_a_stop_stops_every_rank_and_the_job_resumes_from_rank_0s_checkpoint(
    two_processes: tuple[MemoryReporter, dict[str, Any], Launch], tmp_path: Path
) -> None:
    whole, _, first = two_processes
    launch = Launch(first.teacher, first.dataset, tmp_path)
    with pytest.raises(Cancelled):
        launch.run(StopAfterEpoch(), "stopped")
    pids = RunFiles(tmp_path / "stopped" / "ranks").rank_pids()
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)
    assert launch.checkpoint.exists()

    resumed = MemoryReporter()
    report, artifacts = launch.run(resumed, "resumed")
    assert "resumed" in [e[0] for e in resumed.events]
    assert report["processes"] == 2 and "student.pt" in artifacts
    # Exact resume: the epochs after the stop are the uninterrupted run's.
    after = per_epoch(resumed, "train_loss_epoch")
    assert after == pytest.approx(per_epoch(whole, "train_loss_epoch")[-len(after) :], rel=1e-5)


def test_an_engine_error_on_the_ranks_is_the_jobs_error(teacher_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    job = job_description(
        spec(2).model_dump(mode="json"),
        {"teacher": teacher_path, "dataset": broken},
        tmp_path,
        None,
    )
    with pytest.raises(RankFailed) as failed:
        run_on_processes(2, job, tmp_path / "ranks", MemoryReporter())
    assert failed.value.code == "invalid_dataset", failed.value.message


class KillRank1(MemoryReporter):
    """Kills rank 1 (SIGKILL) when the first training loss comes in."""

    def __init__(self, files: RunFiles) -> None:
        super().__init__()
        self.files = files
        self.killed: int | None = None

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
        super().metric(name, value, step=step, epoch=epoch)
        if self.killed is None and name == "train_loss":
            self.killed = int(self.files.pid_file(1).read_text())
            os.kill(self.killed, signal.SIGKILL)


def test_a_killed_rank_loses_the_attempt_and_the_next_resumes(
    two_processes: tuple[MemoryReporter, dict[str, Any], Launch], tmp_path: Path
) -> None:
    _, whole_report, first = two_processes
    launch = Launch(first.teacher, first.dataset, tmp_path)
    files = RunFiles(tmp_path / "killed" / "ranks")
    killer = KillRank1(files)
    with pytest.raises(RankLost, match="torchrun exit 1"):
        launch.run(killer, "killed")
    assert killer.killed is not None
    assert not any(alive(pid) for pid in files.rank_pids())
    assert launch.checkpoint.exists()  # every 5 steps; the kill came at step 10

    resumed = MemoryReporter()
    report, _ = launch.run(resumed, "retried")
    assert "resumed" in [e[0] for e in resumed.events]
    assert report["student"]["accuracy"] == pytest.approx(
        whole_report["student"]["accuracy"], abs=0.02
    )
