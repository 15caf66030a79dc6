"""What a search varies, in one place: the knobs a trial draws and how they become a spec.

A family of losses is added here and nowhere else: name it in `response_families` or in
`MIXED_FAMILIES`, say which loss terms it means. Mixed families add feature or relation
terms to the response term; they name no layers, so the engine pairs the penultimate
features of both models (worker.kd.training.pairing), which needs a teacher whose head can
be found (PAIRABLE_TEACHER_FORMATS) and labelled data (the response term is mixed with
cross-entropy; teacher-only searches stay on the response families).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

from worker.kd.spec import (
    PAIRABLE_TEACHER_FORMATS,
    TOKEN_NOISE_TASKS,
    AugmentSpec,
    SearchSpec,
    job_kind_of,
)

# The augmentation a trial with `augment` on gets: the default recipe's consistent teaching
# (mixup needs soft targets, so families that need hard labels get the noise alone); texts
# get their default share of replaced tokens, and `augment` off states none replaced.
AUGMENT_ON = {"mixup": 0.4, "noise": 0.05}
AUGMENT_HARD_LABELS = {"noise": 0.05}
AUGMENT_TEXTS_OFF = {"tokens": 0.0}
# Families whose loss needs a hard label per sample (no mixup for them).
HARD_LABEL_FAMILIES = ("dkd",)


@dataclass(frozen=True)
class MixedFamily:
    """kd + extra terms on the penultimate features: each extra term's weight is the
    trial's `extra_weight` times its factor, drawn log-uniform in `weights` (the scale the
    terms' papers use, as our losses are normalised)."""

    terms: tuple[tuple[str, float], ...]  # (loss kind, weight factor)
    weights: tuple[float, float]


MIXED_FAMILIES: dict[str, MixedFamily] = {
    "kd+hint": MixedFamily((("hint", 1.0),), (0.1, 10.0)),  # FitNets
    "kd+rkd": MixedFamily((("rkd_distance", 1.0), ("rkd_angle", 2.0)), (1.0, 50.0)),  # 25 / 50
    "kd+sp": MixedFamily((("sp", 1.0),), (10.0, 3000.0)),  # Tung & Mori: 3000
    "kd+pkt": MixedFamily((("pkt", 1.0),), (100.0, 30000.0)),
}


def teacher_pairable(teacher_format: str | None) -> bool:
    """Whether a teacher of this format (the spec's, or the file's when the spec says
    `auto`) lets feature and relation terms pair layers automatically."""
    return teacher_format in PAIRABLE_TEACHER_FORMATS


@dataclass(frozen=True)
class SearchContext:
    """What the space depends on: whether the data has labels, whether the inputs are
    numeric arrays (so that mixup and noise apply), and the reference schedule: the epochs
    and learning rate the planner chose for the search's job (worker.search), None while
    that plan is not made yet (the reference trial then draws neither: the worker plans
    them at its first claim, as for any job)."""

    labelled: bool
    arrays: bool
    epochs: int | None
    learning_rate: float | None
    pairable: bool = False  # the teacher's head can be found (`teacher_pairable`)
    # A Hugging Face teacher's task (None: a tensor job, or not known).
    text_task: str | None = None

    @property
    def texts(self) -> bool:
        """Texts to classify or embed, so `distillation.augment.tokens` applies."""
        return self.text_task in TOKEN_NOISE_TASKS

    @property
    def planned(self) -> bool:
        return self.epochs is not None and self.learning_rate is not None

    @property
    def response_families(self) -> list[str]:
        return ["kd", "dkd"] if self.labelled and self.arrays else ["kd"]

    @property
    def families(self) -> list[str]:
        """Response families, then mixes with feature and relation terms where they apply
        (array inputs, labels, and a teacher whose layers pair automatically)."""
        mixed = list(MIXED_FAMILIES) if self.labelled and self.arrays and self.pairable else []
        return [*self.response_families, *mixed]

    @property
    def learning_rates(self) -> tuple[float, float]:
        """A decade either side of the reference learning rate."""
        assert self.learning_rate is not None
        return max(self.learning_rate / 10, 1e-6), min(self.learning_rate * 10, 1.0)

    @property
    def shortest(self) -> int:
        """The shortest schedule a trial draws: a quarter of the reference's (the longest
        is the reference's own, which the plan fitted to the trial's budget)."""
        assert self.epochs is not None
        return max(1, math.ceil(self.epochs / 4))


def suggest(trial: optuna.Trial, context: SearchContext) -> dict[str, Any]:
    """Draw one trial's params (define-by-run, so enqueued trials can fix some of them).
    Without a reference schedule yet (`context.planned`), epochs and learning rate are not
    drawn: the trial's worker plans them."""
    family = trial.suggest_categorical("family", context.families)
    params: dict[str, Any] = {
        "family": family,
        "temperature": trial.suggest_float("temperature", 1.0, 8.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.0, 1.0) if context.labelled else 1.0,
    }
    if context.planned:
        assert context.epochs is not None
        low, high = context.learning_rates
        params["learning_rate"] = trial.suggest_float("learning_rate", low, high, log=True)
        params["epochs"] = trial.suggest_int("epochs", context.shortest, context.epochs)
    params["augment"] = (
        trial.suggest_categorical("augment", [False, True])
        if context.arrays or context.texts
        else False
    )
    if family in MIXED_FAMILIES:
        low, high = MIXED_FAMILIES[family].weights
        params["extra_weight"] = trial.suggest_float("extra_weight", low, high, log=True)
    return params


def scratch_params(context: SearchContext) -> dict[str, Any]:
    """The candidate every labelled search tries first: no teacher, the reference schedule
    (left to the trial's worker to plan when there is no reference yet)."""
    if not context.planned:
        return {"alpha": 0.0, "augment": False}
    assert context.learning_rate is not None
    low, high = context.learning_rates
    return {
        "alpha": 0.0,
        "learning_rate": min(max(context.learning_rate, low), high),
        "epochs": context.epochs,
        "augment": False,
    }


def own_params(distillation: dict[str, Any], context: SearchContext) -> dict[str, Any] | None:
    """The spec's own recipe as a candidate (response KD at its temperature and alpha, its
    augmentation, the reference schedule): what the job would run without a search, so the
    search tries it too. None when the spec's distillation is not one the space can
    express (its own loss terms, another augmentation, a temperature outside the space)."""
    temperature = float(distillation.get("temperature", 4.0))
    stated = distillation.get("augment") or {}
    augment = {k: v for k, v in stated.items() if v}
    if context.texts:  # unstated tokens: the task's default share
        assert context.text_task is not None
        share = AugmentSpec(tokens=stated.get("tokens")).token_share(context.text_task)
        if share not in (0.0, AugmentSpec().token_share(context.text_task)):
            return None  # a share the space does not draw
        augment = {"tokens": share} if share else {}
    elif augment not in ({}, AUGMENT_ON) or (augment and not context.arrays):
        return None
    if distillation.get("losses") or not 1.0 <= temperature <= 8.0:
        return None
    params: dict[str, Any] = {"family": "kd", "temperature": temperature, "augment": bool(augment)}
    if context.labelled:
        params["alpha"] = float(distillation.get("alpha", 0.7))
    if context.planned:
        params.update(learning_rate=context.learning_rate, epochs=context.epochs)
    return params


def is_scratch(params: dict[str, Any]) -> bool:
    return float(params.get("alpha", 1.0)) == 0.0


def apply(
    spec: dict[str, Any], params: dict[str, Any], context: SearchContext | None = None
) -> dict[str, Any]:
    """The trial's job spec: the search's spec with the params in it, no search, no baseline.

    Epochs and learning rate absent from the params stay as the spec has them (None:
    planned by the trial's worker). A trial's `training.budget_seconds`, what the planner
    fits a schedule into, is at most half the search's: a planned reference trial leaves
    time for at least one more, and every drawn trial is no longer than the reference."""
    child = {key: value for key, value in spec.items() if key not in ("search", "baseline")}
    training = dict(spec.get("training", {}))
    if "epochs" in params:
        training["epochs"] = int(params["epochs"])
    if "learning_rate" in params:
        training["learning_rate"] = float(params["learning_rate"])
    if spec.get("search") is not None:
        own = training.get("budget_seconds")
        half = SearchSpec.model_validate(spec["search"]).budget_seconds / 2
        training["budget_seconds"] = half if own is None else min(float(own), half)
    distillation = dict(spec.get("distillation") or {})
    family, alpha = params.get("family", "kd"), params["alpha"]
    temperature = params.get("temperature", distillation.get("temperature"))
    augment: dict[str, Any] = {}
    if job_kind_of(spec) == "transformer":  # texts: the task's measured share, stated
        task = context.text_task if context is not None else None
        on = params["augment"] and task is not None
        share = AugmentSpec().token_share(task) if task is not None else 0.0
        augment = {"tokens": share} if on else AUGMENT_TEXTS_OFF
    elif params["augment"]:
        augment = AUGMENT_HARD_LABELS if family in HARD_LABEL_FAMILIES else AUGMENT_ON
    distillation.update(temperature=temperature, alpha=alpha, augment=augment, losses=None)
    if is_scratch(params):  # cross-entropy alone: the teacher is never run
        distillation["losses"] = [{"kind": "ce"}]
    elif family != "kd":
        response = "kd" if family in MIXED_FAMILIES else family
        terms: list[dict[str, Any]] = [
            {"kind": response, "weight": alpha, "params": {"temperature": temperature}}
        ]
        if alpha < 1.0:
            terms.append({"kind": "ce", "weight": 1.0 - alpha})
        distillation["losses"] = terms + extra_terms(family, params)
    return {**child, "training": training, "distillation": distillation}


def extra_terms(family: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """A mixed family's feature and relation terms, with no layers: paired automatically."""
    if family not in MIXED_FAMILIES:
        return []
    weight = float(params["extra_weight"])
    return [
        {"kind": kind, "weight": weight * factor} for kind, factor in MIXED_FAMILIES[family].terms
    ]
