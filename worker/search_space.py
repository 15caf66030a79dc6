"""What a search varies, in one place: the knobs a trial draws and how they become a spec.

A family of losses is added here and nowhere else: name it in `response_families` (or a
new list beside it), say in `apply` which loss terms it means. Feature and relation
families need layers paired automatically, which the engine does not do yet; they join
the space when it does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

# The augmentation a trial with `augment` on gets: the default recipe's consistent teaching
# (mixup needs soft targets, so families that need hard labels get the noise alone).
AUGMENT_ON = {"mixup": 0.4, "noise": 0.05}
AUGMENT_HARD_LABELS = {"noise": 0.05}
# Families whose loss needs a hard label per sample (no mixup for them).
HARD_LABEL_FAMILIES = ("dkd",)


@dataclass(frozen=True)
class SearchContext:
    """What the space depends on: whether the data has labels, whether the inputs are
    numeric arrays (so that mixup and noise apply), and the spec's own schedule."""

    labelled: bool
    arrays: bool
    epochs: int
    learning_rate: float

    @property
    def response_families(self) -> list[str]:
        return ["kd", "dkd"] if self.labelled and self.arrays else ["kd"]

    @property
    def learning_rates(self) -> tuple[float, float]:
        return max(self.learning_rate / 10, 1e-6), min(self.learning_rate * 10, 1.0)

    @property
    def shortest(self) -> int:
        return max(1, math.ceil(self.epochs / 4))


def suggest(trial: optuna.Trial, context: SearchContext) -> dict[str, Any]:
    """Draw one trial's params (define-by-run, so enqueued trials can fix some of them)."""
    params: dict[str, Any] = {
        "family": trial.suggest_categorical("family", context.response_families),
        "temperature": trial.suggest_float("temperature", 1.0, 8.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.0, 1.0) if context.labelled else 1.0,
        "learning_rate": trial.suggest_float("learning_rate", *context.learning_rates, log=True),
        "epochs": trial.suggest_int("epochs", context.shortest, context.epochs),
        "augment": trial.suggest_categorical("augment", [False, True]) if context.arrays else False,
    }
    return params


def scratch_params(context: SearchContext) -> dict[str, Any]:
    """The candidate every labelled search tries first: no teacher, the spec's own schedule."""
    low, high = context.learning_rates
    return {
        "alpha": 0.0,
        "learning_rate": min(max(context.learning_rate, low), high),
        "epochs": context.epochs,
        "augment": False,
    }


def is_scratch(params: dict[str, Any]) -> bool:
    return float(params.get("alpha", 1.0)) == 0.0


def apply(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The trial's job spec: the search's spec with the params in it, no search, no baseline."""
    child = {key: value for key, value in spec.items() if key not in ("search", "baseline")}
    training = {
        **spec.get("training", {}),
        "epochs": int(params["epochs"]),
        "learning_rate": float(params["learning_rate"]),
    }
    distillation = dict(spec.get("distillation") or {})
    family, alpha, temperature = params.get("family", "kd"), params["alpha"], params["temperature"]
    augment: dict[str, Any] = {}
    if params["augment"]:
        augment = AUGMENT_HARD_LABELS if family in HARD_LABEL_FAMILIES else AUGMENT_ON
    distillation.update(temperature=temperature, alpha=alpha, augment=augment, losses=None)
    if is_scratch(params):  # cross-entropy alone: the teacher is never run
        distillation["losses"] = [{"kind": "ce"}]
    elif family != "kd":
        terms: list[dict[str, Any]] = [
            {"kind": family, "weight": alpha, "params": {"temperature": temperature}}
        ]
        if alpha < 1.0:
            terms.append({"kind": "ce", "weight": 1.0 - alpha})
        distillation["losses"] = terms
    return {**child, "training": training, "distillation": distillation}
