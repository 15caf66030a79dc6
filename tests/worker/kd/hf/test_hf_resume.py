"""A transformer job stopped and resumed from its checkpoint ends exactly where an unbroken
job ends: the same student weights, bit for bit, the same metrics, the same baseline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.worker.kd.hf.factories import bert_dir, write_jsonl, zip_dir
from worker.kd.engine import DistillResult, distill, prepare
from worker.kd.errors import Cancelled
from worker.kd.spec import JobSpec
from worker.kd.tasks.transformer_job import HFPrepared, checkpoint_fingerprint
from worker.kd.training.checkpoint import Checkpointing, load_checkpoint
from worker.kd.training.reporting import MemoryReporter

# 30 texts: 24 to train on, in batches of 8, for 3 epochs: 9 steps; then the baseline's 9.
SPEC = JobSpec.model_validate({
    "teacher": {"file_id": "t"}, "student": {"arch": "from_teacher", "num_layers": 2},
    "dataset": {"file_id": "d", "max_length": 24},
    # CPU: bit-identical weights need deterministic kernels (CUDA's embedding backward adds
    # with atomics, in no fixed order).
    # The whole schedule stated, so SPEC is the planned spec the checkpoint is keyed on.
    "training": {"epochs": 3, "batch_size": 8, "learning_rate": 1e-3, "device": "cpu",
                 "weight_decay": 0.01, "schedule": "warmup_cosine", "warmup_fraction": 0.05},
    # ... and the texts' augmentation (a stated schedule decides none), for the same reason.
    "distillation": {"augment": {"tokens": 0.0}},
    "baseline": True,
})  # fmt: skip


@dataclass
class StopAt(MemoryReporter):
    """Asks the loop to stop once, after `after_polls` polls (a poll comes before each step)."""

    after_polls: int = 0
    polls: int = 0

    def should_stop(self) -> bool:
        self.polls += 1
        return self.polls == self.after_polls + 1


@dataclass
class Run:
    result: DistillResult
    weights: dict[str, torch.Tensor]
    reporter: MemoryReporter


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    teacher = zip_dir(bert_dir(root / "m", "sequence_classification"), root / "t.zip")
    return teacher, write_jsonl(root / "d.jsonl", 30)


def run(
    files: tuple[Path, Path], out: Path, reporter: MemoryReporter, checkpoint: Checkpointing | None
) -> Run:
    prepared = prepare(SPEC, *files)
    assert isinstance(prepared, HFPrepared)
    result = distill(prepared, out, reporter, checkpoint)
    return Run(result, dict(prepared.student.state_dict()), reporter)


@pytest.fixture(scope="module")
def unbroken(files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run(files, tmp_path_factory.mktemp("unbroken"), MemoryReporter(), None)


# One step in; at the end of epoch 2 (the next step starts epoch 3); mid-epoch in the baseline.
@pytest.mark.parametrize("stop_after", [1, 6, 13])
def test_resume_matches_an_unbroken_run(
    files: tuple[Path, Path], unbroken: Run, tmp_path: Path, stop_after: int
) -> None:
    checkpoint = Checkpointing(tmp_path / "ckpt" / "checkpoint.pt", every_steps=2)
    with pytest.raises(Cancelled):
        run(files, tmp_path / "out", StopAt(after_polls=stop_after), checkpoint)
    assert checkpoint.path.exists()
    assert load_checkpoint(checkpoint.path, checkpoint_fingerprint(SPEC)) is not None
    other = SPEC.model_copy(update={"dataset": SPEC.dataset.model_copy(update={"max_length": 16})})
    assert load_checkpoint(checkpoint.path, checkpoint_fingerprint(other)) is None

    resumed = run(files, tmp_path / "out", MemoryReporter(), checkpoint)

    events = [kind for kind, _, _ in resumed.reporter.events]
    in_baseline = stop_after > 9
    assert events.count("resumed") == (2 if in_baseline else 1)  # the finished KD run, too
    assert resumed.weights.keys() == unbroken.weights.keys()
    assert all(torch.equal(resumed.weights[k], v) for k, v in unbroken.weights.items())
    a, b = unbroken.result.report, resumed.result.report
    assert a["resumable"] is True and b["steps"] == a["steps"] == 9
    assert b["student"]["accuracy"] == a["student"]["accuracy"]
    assert b["agreement"] == a["agreement"]
    assert b["baseline"]["accuracy"] == a["baseline"]["accuracy"]
    assert b["kd_gain"] == a["kd_gain"] is not None
    metrics = unbroken.result.artifacts["metrics.csv"].read_text()
    assert resumed.result.artifacts["metrics.csv"].read_text() == metrics
