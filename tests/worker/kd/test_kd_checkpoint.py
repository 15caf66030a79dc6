"""A run stopped and resumed from its checkpoint ends exactly where an unbroken run ends."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from worker.kd.engine import distill, prepare
from worker.kd.errors import Cancelled
from worker.kd.training.checkpoint import Checkpointing, load_checkpoint
from worker.kd.training.reporting import MemoryReporter

from .conftest import job_spec

SPEC = job_spec(
    {"arch": "mlp", "hidden": [32], "dropout": 0.2}, training={"epochs": 3, "batch_size": 64}
)


@dataclass
class StopAt(MemoryReporter):
    """Asks the loop to stop once, after `after_polls` polls (a poll comes before each step)."""

    after_polls: int = 0
    polls: int = 0

    def should_stop(self) -> bool:
        self.polls += 1
        return self.polls == self.after_polls + 1


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return dict(torch.jit.load(str(out_dir / "student.pt")).state_dict())


@pytest.mark.parametrize("stop_after", [7, 23, 45])  # mid-epoch, one step in, at an epoch end
def test_resume_matches_an_unbroken_run(
    teacher_path: Path, digits_npz: Path, tmp_path: Path, stop_after: int
) -> None:
    unbroken = distill(prepare(SPEC, teacher_path, digits_npz), tmp_path / "a", MemoryReporter())

    checkpoint = Checkpointing(tmp_path / "ckpt" / "checkpoint.pt", every_steps=5)
    with pytest.raises(Cancelled):
        distill(
            prepare(SPEC, teacher_path, digits_npz), tmp_path / "b", StopAt(stop_after), checkpoint
        )
    assert checkpoint.path.exists()
    resumed_reporter = MemoryReporter()
    resumed = distill(
        prepare(SPEC, teacher_path, digits_npz), tmp_path / "b", resumed_reporter, checkpoint
    )

    assert [kind for kind, _, _ in resumed_reporter.events].count("resumed") == 1
    for key in ("accuracy",):
        assert resumed.report["student"][key] == unbroken.report["student"][key]
    assert resumed.report["agreement"] == unbroken.report["agreement"]
    assert resumed.report["steps"] == unbroken.report["steps"]
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    metrics = (tmp_path / "a" / "metrics.csv").read_text()
    assert (tmp_path / "b" / "metrics.csv").read_text() == metrics


def test_a_checkpoint_of_another_recipe_is_ignored(
    teacher_path: Path, digits_npz: Path, tmp_path: Path
) -> None:
    checkpoint = Checkpointing(tmp_path / "checkpoint.pt")
    with pytest.raises(Cancelled):
        distill(prepare(SPEC, teacher_path, digits_npz), tmp_path / "a", StopAt(3), checkpoint)
    other = job_spec({"arch": "mlp", "hidden": [16]}, training={"epochs": 1})
    reporter = MemoryReporter()
    distill(prepare(other, teacher_path, digits_npz), tmp_path / "b", reporter, checkpoint)
    assert "resumed" not in [kind for kind, _, _ in reporter.events]
    assert load_checkpoint(checkpoint.path, "not-this-recipe") is None
