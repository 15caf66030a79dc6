"""The budget planner: steps scale with data and capacity, stated fields are kept, the time
budget caps planned epochs, and the default rule is the one the suite chose."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from worker.kd.budget import (
    DEFAULT_RULE,
    PLANNED_FIELDS,
    TRANSFORMER_RULE,
    UNTUNED_TRANSFORMER_RULE,
    BudgetRule,
    apply_plan,
    capacity_factor,
    plan_job,
    plan_training,
    steps_per_epoch,
    target_steps,
    transformer_rule,
)
from worker.kd.spec import TRAINING_DEFAULTS, AugmentSpec, JobSpec, TrainingSpec

DEFAULTS = {**TrainingSpec().model_dump(), **TRAINING_DEFAULTS}
SUITE_RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results" / "suite.json"
SUITE_HF_RESULTS = SUITE_RESULTS.with_name("suite_hf.json")


def spec(training: dict[str, Any] | None = None, **extra: Any) -> JobSpec:
    body: dict[str, Any] = {
        "teacher": {"file_id": "t"},
        "dataset": {"file_id": "d"},
        "student": {"arch": "mlp", "hidden": [100, 100]},
        **extra,
    }
    if training is not None:
        body["training"] = training
    return JobSpec.model_validate(body)


def plan(n_train: int, n_params: int = 50_000, **kwargs: Any) -> Any:
    return plan_training({}, DEFAULTS, n_train=n_train, n_params=n_params, **kwargs)


def test_steps_grow_with_the_data_but_passes_shrink() -> None:
    small, large = plan(400), plan(40_000)
    assert small.steps < large.steps
    assert small.training["epochs"] > large.training["epochs"]
    # Sublinear: 100x the data is 10x the steps (exponent 0.5), within a pass's rounding.
    ratio = target_steps(40_000, 50_000, DEFAULT_RULE) / target_steps(400, 50_000, DEFAULT_RULE)
    assert ratio == pytest.approx(10, rel=0.01)


def test_small_students_get_more_steps_up_to_the_cap() -> None:
    big, small, tiny = plan(1000, 100_000), plan(1000, 1_000), plan(1000, 10)
    assert big.steps < small.steps < tiny.steps
    assert capacity_factor(100_000, DEFAULT_RULE) == 1.0
    assert capacity_factor(10, DEFAULT_RULE) == DEFAULT_RULE.max_capacity_factor
    assert "for a student under" in small.explanation
    assert "for a student under" not in big.explanation


def test_every_planned_field_comes_from_the_rule() -> None:
    rule = BudgetRule(learning_rate=0.05, batch_size=16, schedule="constant", weight_decay=0.0)
    result = plan(2000, rule=rule)
    assert result.planned == PLANNED_FIELDS
    assert result.training["learning_rate"] == 0.05
    assert result.training["batch_size"] == 16
    assert result.training["schedule"] == "constant"
    assert result.training["weight_decay"] == 0.0
    assert result.steps == result.training["epochs"] * steps_per_epoch(2000, 16)
    assert result.steps >= target_steps(2000, 50_000, rule)


def test_epochs_stay_within_the_rule_bounds() -> None:
    assert plan(32).training["epochs"] == DEFAULT_RULE.max_epochs  # one step a pass
    assert plan(10_000_000).training["epochs"] == DEFAULT_RULE.min_epochs
    assert plan(5).training["batch_size"] == 5  # never a batch larger than the data


def test_stated_fields_keep_their_meaning() -> None:
    stated = {"epochs": 7, "learning_rate": 3e-4, "schedule": "one_cycle"}
    result = plan_training(stated, DEFAULTS, n_train=800, n_params=1000)
    assert {k: result.training[k] for k in stated} == stated
    assert set(result.planned) == set(PLANNED_FIELDS) - set(stated)
    assert result.training["batch_size"] == DEFAULT_RULE.batch_size
    assert "epochs, learning_rate, schedule" in result.explanation


def test_a_stated_batch_size_changes_the_epochs_not_the_steps() -> None:
    at_32 = plan(3200)
    at_128 = plan_training({"batch_size": 128}, DEFAULTS, n_train=3200, n_params=50_000)
    assert at_128.training["epochs"] > at_32.training["epochs"]
    assert at_128.steps == pytest.approx(at_32.steps, rel=0.05)


def test_the_time_budget_caps_planned_epochs() -> None:
    free = plan(1000)
    capped = plan(1000, budget_seconds=10.0, seconds_per_step=0.01)
    per_epoch = steps_per_epoch(1000, DEFAULT_RULE.batch_size)
    assert not free.capped_by_time and capped.capped_by_time
    assert capped.training["epochs"] == int(10.0 / (0.01 * per_epoch)) < free.training["epochs"]
    assert capped.steps * 0.01 <= 10.0
    assert "budget_seconds 10" in capped.explanation
    # A baseline doubles the work, so it halves the epochs the budget affords.
    halved = plan(1000, budget_seconds=10.0, seconds_per_step=0.01, runs=2)
    assert halved.training["epochs"] == capped.training["epochs"] // 2
    # Never below one epoch, and a budget that is not reached changes nothing.
    assert plan(1000, budget_seconds=1e-6, seconds_per_step=0.01).training["epochs"] == 1
    assert plan(1000, budget_seconds=1e9, seconds_per_step=0.01).training == free.training


def test_stated_epochs_are_not_capped_by_the_time_budget() -> None:
    result = plan_training(
        {"epochs": 50}, DEFAULTS, n_train=1000, n_params=1, budget_seconds=1.0, seconds_per_step=1
    )
    assert result.training["epochs"] == 50 and not result.capped_by_time


def test_transformer_jobs_are_planned_by_their_rule_within_the_time_budget() -> None:
    result = plan(1000, task_kind="transformer")
    assert result.planned == PLANNED_FIELDS and not result.capped_by_time
    rule = TRANSFORMER_RULE
    # 3,000 steps for 1,000 texts, 32 steps a pass at batch 32: 94 passes.
    assert result.training["epochs"] == 94 and result.steps == 94 * 32
    assert result.training["batch_size"] == rule.batch_size
    assert result.training["learning_rate"] == rule.learning_rate
    assert result.training["schedule"] == rule.schedule
    assert "transformer rule" in result.explanation
    capped = plan(1000, task_kind="transformer", budget_seconds=2.0, seconds_per_step=0.01)
    assert capped.capped_by_time and capped.training["epochs"] == 6  # 32 steps a pass
    # A stated field is kept, and stated epochs are never capped.
    stated = plan_training(
        {"epochs": 3, "learning_rate": 5e-5}, DEFAULTS, n_train=1000, n_params=1,
        task_kind="transformer", budget_seconds=0.1, seconds_per_step=1.0,
    )  # fmt: skip
    assert stated.training["epochs"] == 3 and stated.training["learning_rate"] == 5e-5
    assert not stated.capped_by_time and "learning_rate" not in stated.planned
    with pytest.raises(ValueError, match="unknown task kind"):
        plan(1000, task_kind="regression")


def test_plan_job_gives_transformer_students_the_transformer_rule() -> None:
    body = {
        "teacher": {"file_id": "t"}, "dataset": {"file_id": "d"},
        "student": {"arch": "from_teacher", "num_layers": 2},
        "training": {"budget_seconds": 10}, "baseline": True,
    }  # fmt: skip
    job = JobSpec.model_validate(body)
    free = plan_job(job, 640, 100_000, None)
    assert free.training["batch_size"] == TRANSFORMER_RULE.batch_size
    # 3,000 * sqrt(0.64) = 2,400 steps at 20 a pass; no capacity factor for transformers.
    assert free.training["epochs"] == 120
    # 20 steps a pass at 0.05 s, shared with the baseline: 10 / (0.05 * 20 * 2) = 5 epochs.
    capped = plan_job(job, 640, 100_000, 0.05)
    assert capped.capped_by_time and capped.training["epochs"] == 5
    # Causal LMs keep the rule of before (no tuning task of theirs chose another).
    lm = plan_job(job, 640, 100_000, None, transformer_rule("causal_lm"))
    assert lm.training["epochs"] == UNTUNED_TRANSFORMER_RULE.fixed_epochs == 20
    assert lm.training["batch_size"] == 64 and lm.training["learning_rate"] == 1e-3
    assert transformer_rule("sentence_embedding") == TRANSFORMER_RULE
    assert transformer_rule("sequence_classification") == TRANSFORMER_RULE


def test_apply_plan_plans_an_empty_training_section() -> None:
    job = spec()
    planned = apply_plan(job, n_train=800, n_params=30_000, seconds_per_step=None)
    expected = plan_job(job, 800, 30_000, None).training
    assert planned.training.model_dump() == expected
    assert planned.training.learning_rate == DEFAULT_RULE.learning_rate
    assert planned.training.epochs != TrainingSpec().epochs
    assert planned.teacher == job.teacher and planned.student == job.student


def test_apply_plan_keeps_stated_fields_and_does_not_replan() -> None:
    job = spec({"epochs": 3, "seed": 5, "budget_seconds": 30})
    planned = apply_plan(job, n_train=800, n_params=30_000, seconds_per_step=0.001)
    assert (planned.training.epochs, planned.training.seed) == (3, 5)
    assert planned.training.budget_seconds == 30
    assert planned.training.batch_size == DEFAULT_RULE.batch_size
    # The planned section is stored on the job: planning it again changes nothing.
    again = apply_plan(planned, n_train=800, n_params=10, seconds_per_step=1.0)
    assert again.training == planned.training


def test_apply_plan_shares_the_time_budget_with_the_baseline() -> None:
    alone = plan_job(spec({"budget_seconds": 20}), 2000, 30_000, 0.01)
    with_baseline = plan_job(spec({"budget_seconds": 20}, baseline=True), 2000, 30_000, 0.01)
    assert with_baseline.training["epochs"] == alone.training["epochs"] // 2


def test_budget_seconds_is_validated() -> None:
    assert TrainingSpec().budget_seconds > 0
    with pytest.raises(ValueError, match="budget_seconds"):
        TrainingSpec.model_validate({"budget_seconds": 0})


def test_default_rule_is_the_suites_choice() -> None:
    """BENCHMARKS.md's suite tables come from bench/results/suite.json; the rule a job gets
    must be the one chosen there."""
    if not SUITE_RESULTS.exists():
        pytest.skip("bench/results/suite.json is written by a full `python -m bench.suite` run")
    measured = json.loads(SUITE_RESULTS.read_text())
    assert not measured["quick"]
    assert measured["chosen"]["budget_rule"] == dataclasses.asdict(DEFAULT_RULE)


def test_transformer_defaults_are_the_transformer_suites_choice() -> None:
    """Each transformer task kind's budget rule and texts' augmentation are what `python -m
    bench.suite_hf` chose on that kind's tuning task (the kinds it has no tuning task for,
    causal LMs, keep the candidate of before)."""
    if not SUITE_HF_RESULTS.exists():
        pytest.skip("bench/results/suite_hf.json is written by `python -m bench.suite_hf`")
    measured = json.loads(SUITE_HF_RESULTS.read_text())
    assert measured["chosen_rule"] == dataclasses.asdict(TRANSFORMER_RULE)
    before = dataclasses.asdict(UNTUNED_TRANSFORMER_RULE)
    for kind in ("sequence_classification", "sentence_embedding", "causal_lm"):
        rule = measured["chosen_rules"].get(kind, before)
        assert dataclasses.asdict(transformer_rule(kind)) == rule, kind
        recipe = measured["chosen_recipes"].get(kind, {})
        share = recipe.get("augment", {}).get("tokens", 0.0)
        assert AugmentSpec().token_share(kind) == share, kind


def bare_tensor_spec(training: dict[str, Any] | None = None) -> JobSpec:
    body: dict[str, Any] = {
        "teacher": {"file_id": "file_teacher"},
        "dataset": {"file_id": "file_dataset"},
        "student": {"arch": "mlp", "hidden": [16]},
    }
    if training is not None:
        body["training"] = training
    return JobSpec.model_validate(body)


def test_a_bare_spec_leaves_the_planned_fields_to_the_planner() -> None:
    training = JobSpec.model_validate(bare_tensor_spec().model_dump()).training
    assert all(getattr(training, f) is None for f in PLANNED_FIELDS)
    props = TrainingSpec.model_json_schema()["properties"]
    assert all("planned" in props[f]["description"] for f in PLANNED_FIELDS)


def test_prepare_plans_a_bare_spec_once(teacher_path: Path, digits_npz: Path) -> None:
    from worker.kd.engine import prepare
    from worker.kd.training.checkpoint import fingerprint

    prepared = prepare(bare_tensor_spec(), teacher_path, digits_npz)
    plan = prepared.plan
    assert plan is not None and plan.planned == PLANNED_FIELDS
    n_train = len(prepared.data.x_train)
    per_epoch = steps_per_epoch(n_train, DEFAULT_RULE.batch_size)
    n_params = sum(p.numel() for p in nn_student(prepared))
    want = target_steps(n_train, n_params, DEFAULT_RULE)
    assert prepared.spec.training.batch_size == DEFAULT_RULE.batch_size
    assert prepared.spec.training.learning_rate == DEFAULT_RULE.learning_rate
    if not plan.capped_by_time:
        assert prepared.spec.training.epochs == max(DEFAULT_RULE.min_epochs, -(-want // per_epoch))
    # What the pipeline stores: planning it again plans nothing and changes nothing.
    stored = JobSpec.model_validate(prepared.spec.model_dump(mode="json"))
    again = prepare(stored, teacher_path, digits_npz)
    assert again.plan is None and again.spec.training == prepared.spec.training
    assert fingerprint(again.spec) == fingerprint(prepared.spec)  # its checkpoint resumes


def test_prepare_keeps_stated_fields_and_a_tiny_budget_caps_epochs(
    teacher_path: Path, digits_npz: Path
) -> None:
    from worker.kd.engine import prepare

    spec = bare_tensor_spec({"learning_rate": 0.003, "budget_seconds": 0.001})
    prepared = prepare(spec, teacher_path, digits_npz)
    assert prepared.plan is not None and prepared.plan.capped_by_time
    assert prepared.spec.training.epochs == 1
    assert prepared.spec.training.learning_rate == 0.003
    assert "learning_rate" not in prepared.plan.planned
    assert "capped to 1 epochs by budget_seconds" in prepared.plan.explanation


def nn_student(prepared: Any) -> Any:
    from worker.kd.tasks.tensor_job import _new_student

    return _new_student(prepared).parameters()


def test_a_section_with_every_schedule_field_stated_explains_without_a_gap() -> None:
    stated = {"epochs": 6, "batch_size": 32, "learning_rate": 5e-4, "weight_decay": 0.01,
              "schedule": "warmup_cosine", "warmup_fraction": 0.05}  # fmt: skip
    result = plan_training(stated, DEFAULTS, n_train=2560, n_params=10)
    assert result.planned == () and "(480 steps). Fields you stated" in result.explanation
