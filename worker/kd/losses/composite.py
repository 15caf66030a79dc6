"""A job's loss: a validated weighted sum of named terms, L = sum_i w_i * L_i."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from worker.kd.losses.base import DistillationLoss, LossInputs, Shape, as_shape
from worker.kd.losses.registry import LOSSES

Side = Literal["student", "teacher"]
TERM_KEYS = ("kind", "weight", "name", "params", "teacher_layer", "student_layer")


class LossTerm(NamedTuple):
    name: str  # how the term's value is logged
    weight: float
    loss: DistillationLoss
    teacher_layer: str | None = None  # set exactly for feature and relation losses
    student_layer: str | None = None


class CompositeParts(NamedTuple):
    total: torch.Tensor  # () sum of weight * part, the value to backpropagate
    parts: dict[str, torch.Tensor]  # term name -> () its unweighted value


def shape_key(side: Side, layer: str) -> str:
    """The key of a layer's per-sample shape in `build_loss_terms`'s `shapes`."""
    return f"{side}.{layer}"


class CompositeLoss(nn.Module):
    """The weighted sum of loss terms: total = sum_i w_i * L_i(inputs for term i).

    Each feature or relation term reads the outputs of its own student and teacher layers
    from the feature dicts given to `forward`. The terms' learnable adapters are
    submodules, so `parameters()` yields them for the optimizer.
    """

    def __init__(self, terms: Sequence[LossTerm | tuple[Any, ...]]) -> None:
        super().__init__()
        self.terms = tuple(LossTerm(*term) for term in terms)
        if not self.terms:
            raise ValueError("A composite loss needs at least one term.")
        for term in self.terms:
            if not isinstance(term.loss, DistillationLoss):
                raise ValueError(
                    f"Loss term {term.name!r} is a {type(term.loss).__name__}, not a registered "
                    "DistillationLoss with a compute(inputs) method."
                )
        names = [term.name for term in self.terms]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"Loss term names must be unique; repeated: {', '.join(duplicates)}")
        self.losses = nn.ModuleList(term.loss for term in self.terms)

    @property
    def student_layers(self) -> tuple[str, ...]:
        """The student layers whose outputs `forward` needs, sorted."""
        return tuple(sorted({t.student_layer for t in self.terms if t.student_layer is not None}))

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        """The teacher layers whose outputs `forward` needs, sorted."""
        return tuple(sorted({t.teacher_layer for t in self.terms if t.teacher_layer is not None}))

    def forward(
        self,
        student_logits: torch.Tensor,  # (B, K)
        teacher_logits: torch.Tensor,  # (B, K)
        labels: torch.Tensor | None = None,  # (B,)
        student_features: Mapping[str, torch.Tensor] | None = None,  # layer -> (B, *S)
        teacher_features: Mapping[str, torch.Tensor] | None = None,  # layer -> (B, *T)
    ) -> CompositeParts:
        parts: dict[str, torch.Tensor] = {}
        weighted: list[torch.Tensor] = []
        for term in self.terms:
            inputs = LossInputs(
                student_logits,
                teacher_logits,
                labels,
                captured(term, "student", term.student_layer, student_features),
                captured(term, "teacher", term.teacher_layer, teacher_features),
            )
            parts[term.name] = term.loss.compute(inputs)
            weighted.append(term.weight * parts[term.name])
        total = weighted[0]
        for value in weighted[1:]:
            total = total + value
        return CompositeParts(total, parts)


def captured(
    term: LossTerm, side: Side, layer: str | None, features: Mapping[str, torch.Tensor] | None
) -> torch.Tensor | None:
    if layer is None:
        return None
    if features is None or layer not in features:
        raise ValueError(
            f"Loss term {term.name!r} needs the output of {side} layer {layer!r}, "
            "which was not captured in this forward pass."
        )
    return features[layer]


def build_loss_terms(
    specs: Sequence[Mapping[str, Any]],
    shapes: Mapping[str, Sequence[int]],
    *,
    has_labels: bool | None = None,
) -> CompositeLoss:
    """Validate term specs and build their weighted sum.

    A spec is `{"kind": "hint", "weight": 1.0, "teacher_layer": "...", "student_layer": "...",
    "params": {...}, "name": "..."}`; only `kind` is required, and the layers exactly for
    feature and relation losses. `shapes` maps `shape_key(side, layer)`, e.g.
    "student.features.2", to that layer's per-sample output shape (batch excluded).
    `has_labels=False` rejects terms that need labels; None defers that check to the batch.
    Every problem is a ValueError whose message names the term, `losses[i]`.
    """
    terms: list[LossTerm] = []
    for index, spec in enumerate(specs):
        terms.append(build_term(f"losses[{index}]", spec, shapes, has_labels))
    return CompositeLoss(unique_names(terms, specs))


def build_term(
    where: str,
    spec: Mapping[str, Any],
    shapes: Mapping[str, Sequence[int]],
    has_labels: bool | None,
) -> LossTerm:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be an object with a 'kind', got {spec!r}")
    unknown = sorted(set(spec) - set(TERM_KEYS))
    if unknown:
        raise ValueError(
            f"{where} has unknown keys {', '.join(unknown)}; allowed: {', '.join(TERM_KEYS)}"
        )
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in LOSSES:
        raise ValueError(
            f"{where}: unknown kind {kind!r}; known kinds: {', '.join(sorted(LOSSES))}"
        )
    cls = LOSSES[kind]
    where = f"{where} ({kind!r})"
    weight = check_weight(where, spec.get("weight", 1.0))
    params = spec.get("params", {})
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}: params must be an object, got {params!r}")
    if cls.needs_labels and has_labels is False:
        raise ValueError(
            f"{where} needs labels, but the dataset has none; give it a `y` array or drop the term."
        )
    layers, layer_shapes = term_layers(where, cls, spec, shapes)
    name = spec.get("name", kind)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty string, got {name!r}")
    loss = instantiate(where, cls, dict(params), layer_shapes)
    return LossTerm(name, weight, loss, layers[1], layers[0])


def check_weight(where: str, weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ValueError(f"{where}: weight must be a number, got {weight!r}")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{where}: weight must be finite and non-negative, got {weight!r}")
    return float(weight)


def term_layers(
    where: str,
    cls: type[DistillationLoss],
    spec: Mapping[str, Any],
    shapes: Mapping[str, Sequence[int]],
) -> tuple[tuple[str | None, str | None], tuple[Shape, Shape] | None]:
    """(student_layer, teacher_layer) and their shapes; Nones for a loss on logits."""
    if not cls.uses_layers():
        given = [key for key in ("teacher_layer", "student_layer") if key in spec]
        if given:
            raise ValueError(
                f"{where} is a {cls.family} loss on logits and takes no layers; "
                f"remove {', '.join(given)}."
            )
        return (None, None), None
    student_layer = layer_name(where, cls, spec, "student")
    teacher_layer = layer_name(where, cls, spec, "teacher")
    student_shape = layer_shape(where, shapes, "student", student_layer)
    teacher_shape = layer_shape(where, shapes, "teacher", teacher_layer)
    return (student_layer, teacher_layer), (student_shape, teacher_shape)


def layer_name(where: str, cls: type[DistillationLoss], spec: Mapping[str, Any], side: Side) -> str:
    key = f"{side}_layer"
    if key not in spec:
        raise ValueError(
            f"{where} is a {cls.family} loss and needs {key!r}: the name of the {side} layer "
            "whose output it compares."
        )
    layer = spec[key]
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"{where}: {key} must be a non-empty string, got {layer!r}")
    return layer


def layer_shape(where: str, shapes: Mapping[str, Sequence[int]], side: Side, layer: str) -> Shape:
    key = shape_key(side, layer)
    if key not in shapes:
        prefix = shape_key(side, "")
        known = sorted(k.removeprefix(prefix) for k in shapes if k.startswith(prefix))
        raise ValueError(
            f"{where}: the {side} has no layer {layer!r}; "
            f"known {side} layers: {', '.join(known) or 'none'}"
        )
    return as_shape(shapes[key])


def instantiate(
    where: str,
    cls: type[DistillationLoss],
    params: dict[str, Any],
    layer_shapes: tuple[Shape, Shape] | None,
) -> DistillationLoss:
    if layer_shapes is not None:
        if cls.needs_shapes:
            if {"student_shape", "teacher_shape"} & set(params):
                raise ValueError(f"{where}: the shapes come from the layers, not from params")
            params = {"student_shape": layer_shapes[0], "teacher_shape": layer_shapes[1], **params}
        else:
            cls.check_shapes(*layer_shapes)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"{where}: bad params {params!r}: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def unique_names(terms: list[LossTerm], specs: Sequence[Mapping[str, Any]]) -> list[LossTerm]:
    """Number repeated default names (kd, kd_2, ...); repeated explicit names stay an error."""
    explicit = {spec["name"] for spec in specs if "name" in spec}
    seen: dict[str, int] = {}
    named: list[LossTerm] = []
    for term, spec in zip(terms, specs, strict=True):
        if "name" in spec:
            named.append(term)
            continue
        count = seen[term.name] = seen.get(term.name, 0) + 1
        name = term.name if count == 1 else f"{term.name}_{count}"
        while name in explicit:
            count = seen[term.name] = count + 1
            name = f"{term.name}_{count}"
        named.append(term._replace(name=name))
    return named
