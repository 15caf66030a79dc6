"""The engine's vocabulary, torch-free: task kinds and the loss catalogue.

One source of truth for every list the spec validates with and the engine builds from:
`spec.py` (which the API imports without torch) reads the names, families and task kinds
here; `register_loss` refuses a loss that is not catalogued here or whose family differs.
Adding a loss is one entry here and one registered class in `worker.kd.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskKind = Literal["tensor_classification", "sequence_classification", "sentence_embedding",
                   "causal_lm"]  # fmt: skip
TENSOR_TASKS: tuple[TaskKind, ...] = ("tensor_classification",)
TRANSFORMER_TASKS: tuple[TaskKind, ...] = (
    "sequence_classification",
    "sentence_embedding",
    "causal_lm",
)
TASK_KINDS: tuple[TaskKind, ...] = (*TENSOR_TASKS, *TRANSFORMER_TASKS)
# Tasks whose student outputs logits (classes, or next tokens).
LOGIT_TASKS: tuple[TaskKind, ...] = ("tensor_classification", "sequence_classification",
                                     "causal_lm")  # fmt: skip

Family = Literal["response", "feature", "relation", "label"]


@dataclass(frozen=True)
class LossMeta:
    """What the spec and the engine need to know of a loss before building it."""

    name: str
    family: Family
    needs_layers: bool  # a term pairs a student layer with a teacher layer
    layer_mapped: bool  # layers may be left out: the student's layer map pairs them
    task_kinds: tuple[TaskKind, ...]


def _meta(
    name: str,
    family: Family,
    task_kinds: tuple[TaskKind, ...],
    *,
    layer_mapped: bool = False,
) -> LossMeta:
    needs_layers = family in ("feature", "relation")
    return LossMeta(name, family, needs_layers, layer_mapped, task_kinds)


_TENSOR_AND_LOGITS = LOGIT_TASKS
LOSS_CATALOGUE: dict[str, LossMeta] = {
    meta.name: meta
    for meta in (
        _meta("attention", "feature", TENSOR_TASKS),
        _meta("ce", "label", _TENSOR_AND_LOGITS),
        _meta("cosine", "feature", TENSOR_TASKS),
        _meta("dkd", "response", TENSOR_TASKS),
        _meta("embedding_mse", "response", ("tensor_classification", "sentence_embedding")),
        _meta("hidden_cosine", "feature", TRANSFORMER_TASKS, layer_mapped=True),
        _meta("hint", "feature", TENSOR_TASKS),
        _meta("jsd", "response", ("causal_lm",)),
        _meta("hinton", "response", TENSOR_TASKS),
        _meta("kd", "response", _TENSOR_AND_LOGITS),
        _meta("logit_mse", "response", _TENSOR_AND_LOGITS),
        _meta("pkt", "relation", TENSOR_TASKS),
        _meta("reverse_kl", "response", ("causal_lm",)),
        _meta("rkd_angle", "relation", TENSOR_TASKS),
        _meta("rkd_distance", "relation", TENSOR_TASKS),
        _meta("self_attention_kl", "feature", TRANSFORMER_TASKS, layer_mapped=True),
        _meta("soft_ce", "response", _TENSOR_AND_LOGITS),
        _meta("sp", "relation", TENSOR_TASKS),
    )
}
LOSS_KINDS: tuple[str, ...] = tuple(sorted(LOSS_CATALOGUE))


def loss_meta(name: str) -> LossMeta:
    """The catalogue entry of `name`; a ValueError naming the known losses otherwise."""
    if name not in LOSS_CATALOGUE:
        raise ValueError(f"unknown loss kind {name!r}; known: {', '.join(LOSS_KINDS)}")
    return LOSS_CATALOGUE[name]


def losses_for(task: TaskKind) -> tuple[str, ...]:
    """The loss names a job of this task kind can use."""
    return tuple(name for name in LOSS_KINDS if task in LOSS_CATALOGUE[name].task_kinds)
