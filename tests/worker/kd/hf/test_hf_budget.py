"""Transformer jobs are planned at their first claim as tensor jobs are: the transformer
rule fills the fields left open, a timed step lets budget_seconds cap the epochs, the
planned section is stored and not planned again, and timing changes no initialisation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.kd.hf.factories import bert_dir, gpt2_dir, write_jsonl, zip_dir
from worker.kd.budget import PLANNED_FIELDS, TRANSFORMER_RULE, steps_per_epoch, target_steps
from worker.kd.engine import prepare
from worker.kd.jobs import HFPrepared
from worker.kd.spec import JobSpec
from worker.kd.training.evaluate import count_parameters


def bare(student: dict[str, Any], **training: Any) -> JobSpec:
    return JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": student,
        "dataset": {"file_id": "d", "max_length": 24}, "training": training,
    })  # fmt: skip


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hf-budget")
    teacher = zip_dir(bert_dir(root / "m", "sequence_classification"), root / "t.zip")
    return teacher, write_jsonl(root / "d.jsonl", n=80)


def test_a_bare_transformer_spec_is_planned_by_the_rule_with_a_timed_step(
    classifier: tuple[Path, Path],
) -> None:
    teacher, data = classifier
    prepared = prepare(bare({"arch": "from_teacher", "num_layers": 2}), teacher, data)
    assert isinstance(prepared, HFPrepared)
    plan = prepared.plan
    assert plan is not None and plan.planned == PLANNED_FIELDS and not plan.capped_by_time
    training = prepared.spec.training
    n_train = len(prepared.train)
    assert training.batch_size == min(TRANSFORMER_RULE.batch_size, n_train)
    assert training.learning_rate == TRANSFORMER_RULE.learning_rate
    assert training.epochs is not None and training.batch_size is not None
    steps = target_steps(n_train, count_parameters(prepared.student), TRANSFORMER_RULE)
    per_epoch = steps_per_epoch(n_train, training.batch_size)
    assert training.epochs == min(max(math.ceil(steps / per_epoch), 5), 500)
    assert plan.steps == training.epochs * steps_per_epoch(n_train, training.batch_size)
    assert "transformer rule" in plan.explanation
    # What the pipeline stores is planned: a resume plans nothing and changes nothing.
    stored = JobSpec.model_validate(prepared.spec.model_dump(mode="json"))
    again = prepare(stored, teacher, data)
    assert isinstance(again, HFPrepared)
    assert again.plan is None and again.spec.training == training
    prepared.teacher.cleanup()
    again.teacher.cleanup()


def test_a_tiny_budget_caps_a_transformer_jobs_epochs_and_keeps_stated_fields(
    classifier: tuple[Path, Path],
) -> None:
    teacher, data = classifier
    job = bare({"arch": "from_teacher", "num_layers": 2}, learning_rate=5e-4, budget_seconds=1e-4)
    prepared = prepare(job, teacher, data)
    assert isinstance(prepared, HFPrepared) and prepared.plan is not None
    assert prepared.plan.capped_by_time and prepared.spec.training.epochs == 1
    assert prepared.spec.training.learning_rate == 5e-4
    assert "learning_rate" not in prepared.plan.planned
    assert "capped to 1 epochs by budget_seconds" in prepared.plan.explanation
    prepared.teacher.cleanup()


def test_timing_the_step_changes_neither_the_student_nor_the_random_draws(
    tmp_path: Path,
) -> None:
    """A stated schedule times nothing; a planned one times copies and restores the RNG,
    so both students start from the same weights and training draws the same numbers."""
    teacher = zip_dir(gpt2_dir(tmp_path / "m"), tmp_path / "t.zip")
    data = write_jsonl(tmp_path / "d.jsonl", n=48, labeled=False)
    student = {"arch": "hf", "config": {"n_layer": 2}}
    stated = {"epochs": 20, "batch_size": 64, "learning_rate": 1e-3, "weight_decay": 0.01,
              "schedule": "warmup_cosine", "warmup_fraction": 0.05}  # fmt: skip
    plain = prepare(bare(student, **stated), teacher, data)
    plain_draw = torch.rand(3)
    planned = prepare(bare(student), teacher, data)
    planned_draw = torch.rand(3)
    assert isinstance(plain, HFPrepared) and isinstance(planned, HFPrepared)
    assert plain.plan is None and planned.plan is not None
    assert torch.equal(plain_draw, planned_draw)
    for a, b in zip(plain.student.parameters(), planned.student.parameters(), strict=True):
        assert torch.equal(a, b)
    plain.teacher.cleanup()
    planned.teacher.cleanup()
