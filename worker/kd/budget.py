"""The training budget a job gets when its spec leaves it open: chosen with the recipe.

A user who names only teacher, student and dataset should not have to know that a
distilled student needs a patient schedule. `plan_training` turns what the job knows
before training (the training set's size, the student's parameter count, the task kind,
the time it may take and a measured cost per optimizer step) into a full training
section, keeping every field the user stated. `apply_plan` does the same on a `JobSpec`.

How the length is chosen: a number of optimizer steps, not of epochs, because what a
student needs is updates. The steps grow with the data, but more slowly than the data
(`(n_train / 1000) ** data_exponent`), so a small transfer set gets many passes and a
large one few; a student smaller than `capacity_params` gets proportionally more steps
(small students learn the teacher's function more slowly). The steps become epochs, then
`budget_seconds` caps the epochs: it is a soft target the plan keeps to from the measured
cost of a step, unlike `max_runtime_seconds`, which stops and fails a job.

The rule's constants were chosen by measurement together with the default recipe
(`python -m bench.suite`; BENCHMARKS.md, "Budget and recipe on held-out tasks"); a test
keeps `DEFAULT_RULE` in step with the suite's choice.

This module imports no torch: the API may plan (and show) a budget at submit time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from worker.kd.spec import (
    TRAINING_DEFAULTS,
    TRANSFORMER_ARCHS,
    JobSpec,
    PlannedTraining,
)

# The training fields the planner chooses when the user does not state them.
PLANNED_FIELDS: tuple[str, ...] = (
    "epochs", "batch_size", "learning_rate", "weight_decay", "schedule", "warmup_fraction",
)  # fmt: skip
# Task kinds, each with its rule (below): tensor classification jobs and transformer jobs.
TASK_KINDS: tuple[str, ...] = ("classification", "transformer")
REFERENCE_SAMPLES = 1000


@dataclass(frozen=True)
class BudgetRule:
    """How to size a training run from the data and the student.

    `fixed_epochs` makes a rule that ignores the data (the pre-planner default: 20
    epochs whatever the size), kept so the suite can measure against it.
    """

    learning_rate: float = 1e-2
    batch_size: int = 32
    steps_per_1k: int = 3000  # optimizer steps for REFERENCE_SAMPLES training samples
    data_exponent: float = 0.5
    capacity_params: int = 5_000
    capacity_exponent: float = 0.25
    max_capacity_factor: float = 2.0
    min_epochs: int = 5
    max_epochs: int = 500
    schedule: str = "warmup_cosine"
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    fixed_epochs: int | None = None

    def with_(self, **changes: Any) -> BudgetRule:
        return replace(self, **changes)


DEFAULT_RULE = BudgetRule()
# Transformer jobs that classify or embed texts (Hugging Face teacher): the tensor rule's
# steps (3k*sqrt(n/1k), no capacity factor), batch 32, lr 3e-3, warm-up + cosine, chosen
# together with the texts' augmentation (worker.kd.spec.DEFAULT_TOKEN_SHARES) on each
# kind's tuning task (`python -m bench.suite_hf`; BENCHMARKS.md, "Transformer tasks"),
# capped by budget_seconds at a measured step.
TRANSFORMER_RULE = BudgetRule(
    learning_rate=3e-3, batch_size=32, capacity_exponent=0.0, max_epochs=500,
    schedule="warmup_cosine", warmup_fraction=0.05, weight_decay=0.01,
)  # fmt: skip
# The task kinds the suite tuned TRANSFORMER_RULE on. Causal LMs keep the rule of before (a
# fixed 20 passes at batch 64, lr 1e-3, the values TRAINING_DEFAULTS held before
# planning): no tuning task of theirs chose another.
TUNED_TRANSFORMER_TASKS = ("sequence_classification", "sentence_embedding")
UNTUNED_TRANSFORMER_RULE = BudgetRule(
    learning_rate=1e-3, batch_size=64, fixed_epochs=20, schedule="warmup_cosine",
    warmup_fraction=0.05, weight_decay=0.01,
)  # fmt: skip


def transformer_rule(task: str) -> BudgetRule:
    """The budget rule of a transformer job whose teacher does `task`."""
    return TRANSFORMER_RULE if task in TUNED_TRANSFORMER_TASKS else UNTUNED_TRANSFORMER_RULE


RULES: dict[str, BudgetRule] = {"classification": DEFAULT_RULE, "transformer": TRANSFORMER_RULE}


@dataclass(frozen=True)
class Plan:
    """A full training section, which of its fields were planned, and why."""

    training: dict[str, Any]
    planned: tuple[str, ...]
    steps: int
    capped_by_time: bool
    explanation: str


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one pass (as the training loop counts them: a last batch of one
    joins the one before)."""
    steps = math.ceil(n_train / batch_size)
    return steps - 1 if steps > 1 and n_train % batch_size == 1 else steps


def capacity_factor(n_params: int, rule: BudgetRule) -> float:
    """How many times more steps a student of `n_params` parameters gets (1 for students
    at or above the rule's reference size)."""
    if n_params <= 0 or n_params >= rule.capacity_params:
        return 1.0
    factor = (rule.capacity_params / n_params) ** rule.capacity_exponent
    return min(factor, rule.max_capacity_factor)


def target_steps(n_train: int, n_params: int, rule: BudgetRule) -> int:
    """Optimizer steps the rule wants for this data and student, before the time budget."""
    data = (max(n_train, 1) / REFERENCE_SAMPLES) ** rule.data_exponent
    return max(1, round(rule.steps_per_1k * data * capacity_factor(n_params, rule)))


def plan_training(
    explicit: Mapping[str, Any],
    defaults: Mapping[str, Any],
    *,
    n_train: int,
    n_params: int,
    task_kind: str = "classification",
    budget_seconds: float | None = None,
    seconds_per_step: float | None = None,
    runs: int = 1,
    rule: BudgetRule | None = None,
) -> Plan:
    """The training section for a job.

    `explicit`: the fields the user stated (kept as they are); `defaults`: the section's
    values for everything else (what the spec would use without a plan). `runs`: how many
    trainings the job makes at this budget (2 with a baseline), so the time budget is
    shared. `rule`: the task kind's rule (RULES) unless given. Without `seconds_per_step`
    or `budget_seconds` the time budget is not applied.
    """
    if task_kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {task_kind!r}; known: {', '.join(TASK_KINDS)}")
    rule = RULES[task_kind] if rule is None else rule
    training = {**defaults, **explicit}
    planned = tuple(f for f in PLANNED_FIELDS if f not in explicit)
    reasons: list[str] = []
    chosen: dict[str, Any] = {
        "learning_rate": rule.learning_rate,
        "weight_decay": rule.weight_decay,
        "schedule": rule.schedule,
        "warmup_fraction": rule.warmup_fraction,
        "batch_size": max(1, min(rule.batch_size, n_train)),
    }
    training.update({f: v for f, v in chosen.items() if f in planned})
    per_epoch = steps_per_epoch(n_train, training["batch_size"])
    if "epochs" in planned:
        training["epochs"], why = _epochs_for(n_train, n_params, per_epoch, rule)
        reasons.append(why if task_kind == "classification" else f"{why} (the {task_kind} rule)")
    capped = False
    if "epochs" in planned and budget_seconds and seconds_per_step:
        affordable = int(budget_seconds / (seconds_per_step * per_epoch * max(runs, 1)))
        if affordable < training["epochs"]:
            training["epochs"], capped = max(1, affordable), True
            reasons.append(
                f"capped to {training['epochs']} epochs by budget_seconds {budget_seconds:g} "
                f"at {seconds_per_step * 1e3:.3g} ms per step"
                + (f" for {runs} trainings" if runs > 1 else "")
            )
    steps = training["epochs"] * per_epoch
    stated = ", ".join(sorted(explicit)) or "none"
    explanation = (
        f"Planned for {n_train:,} training samples and a {n_params:,}-parameter student: "
        f"batch {training['batch_size']}, learning rate {training['learning_rate']:g}, "
        f"{training['schedule']}, weight decay {training['weight_decay']:g}, "
        f"{training['epochs']} epochs ({steps:,} steps)"
        + "".join(f"; {reason}" for reason in reasons)
        + f". Fields you stated and kept: {stated}."
    )
    return Plan(training, planned, steps, capped, explanation)


def _epochs_for(n_train: int, n_params: int, per_epoch: int, rule: BudgetRule) -> tuple[int, str]:
    if rule.fixed_epochs is not None:
        return rule.fixed_epochs, f"{rule.fixed_epochs} epochs whatever the data"
    steps = target_steps(n_train, n_params, rule)
    epochs = min(max(math.ceil(steps / per_epoch), rule.min_epochs), rule.max_epochs)
    factor = capacity_factor(n_params, rule)
    small = f", x{factor:.2f} for a student under {rule.capacity_params:,} parameters"
    return epochs, (
        f"{rule.steps_per_1k:,} steps per {REFERENCE_SAMPLES:,} samples scaled by "
        f"(n/{REFERENCE_SAMPLES:,})^{rule.data_exponent:g}"
        + (small if factor > 1 else "")
        + f" = {steps:,} steps, {epochs} epochs (within {rule.min_epochs}-{rule.max_epochs})"
    )


def plan_job(
    spec: JobSpec,
    n_train: int,
    n_params: int,
    seconds_per_step: float | None,
    rule: BudgetRule | None = None,
) -> Plan:
    """The plan for a job's spec: its stated training fields kept, the rest planned by
    `rule`, else the rule of the job's kind (transformer students: TRANSFORMER_RULE).

    A planned field the spec leaves None counts as not stated (a stored spec is dumped
    whole, so which fields were set cannot be told apart any other way); every other
    value is kept.
    """
    current = spec.training.model_dump()
    explicit = {f: current[f] for f in PLANNED_FIELDS if current[f] is not None}
    defaults = {**current, **{f: v for f, v in TRAINING_DEFAULTS.items() if current[f] is None}}
    kind = "transformer" if spec.student.arch in TRANSFORMER_ARCHS else "classification"
    return plan_training(
        explicit,
        defaults,
        n_train=n_train,
        n_params=n_params,
        task_kind=kind,
        budget_seconds=spec.training.budget_seconds,
        seconds_per_step=seconds_per_step,
        runs=2 if spec.baseline else 1,
        rule=rule,
    )


def apply_plan(
    spec: JobSpec,
    n_train: int,
    n_params: int,
    seconds_per_step: float | None,
    rule: BudgetRule | None = None,
) -> JobSpec:
    """The spec with its training section planned: what the engine should run.

    Called once, at a job's first claim (the engine's `prepare`), with the loaded
    training set's size, the built student's parameter count and a measured cost of one
    optimizer step (teacher forward included); the returned spec is stored on the job, so
    a resume finds no field left to plan. `plan_job` gives the same plan with its
    explanation, for the job's events.
    """
    plan = plan_job(spec, n_train, n_params, seconds_per_step, rule)
    return with_plan(spec, plan)


def with_plan(spec: JobSpec, plan: Plan) -> JobSpec:
    """`spec` with `plan`'s training section (every planned field a number)."""
    return spec.model_copy(update={"training": PlannedTraining.model_validate(plan.training)})
