"""A transformer job's loss: weighted registry terms on the task's outputs, with padding
removed and layers paired through the student's layer map.

Layer numbers in a term are 1-based transformer layers; for `hidden_cosine`, 0 is the
embedding output. Without layers, `hidden_cosine` pairs every student layer with its
teacher layer, and `self_attention_kl` pairs the last layers (MiniLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from worker.kd.catalogue import LOGIT_TASKS, LOSS_CATALOGUE, TRANSFORMER_TASKS
from worker.kd.errors import InvalidSpec
from worker.kd.hf.data import target_mask
from worker.kd.hf.models import Outputs
from worker.kd.hf.topk import TopK, as_logits, bucket_log_probs
from worker.kd.losses import DistillationLoss, LossInputs, get_loss, loss_info
from worker.kd.losses.transformer import attention_log_probs
from worker.kd.spec import JobSpec

TRANSFORMER_KINDS = tuple(
    name for name, meta in LOSS_CATALOGUE.items() if set(meta.task_kinds) & set(TRANSFORMER_TASKS)
)


@dataclass
class Term:
    name: str
    weight: float
    loss: DistillationLoss
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (student, teacher) layers


def layer_map(student_layers: int, teacher_layers: int, kept: list[int] | None) -> list[int]:
    """The teacher layer (1-based) each student layer 1..n learns from: the copied layer
    for a `from_teacher` student, else a uniform spread ending on the last layer."""
    if kept is not None:
        return [i + 1 for i in kept]
    return [round(j * teacher_layers / student_layers) for j in range(1, student_layers + 1)]


def default_terms(
    spec: JobSpec, task: str, labeled: bool, same_width: bool
) -> list[dict[str, Any]]:
    """The recipe that measured best for each task (bench/hf_recipes.py, its table in
    BENCHMARKS.md; tests/worker/kd/hf/test_hf_defaults.py keeps the two in step).

    Classification and causal LMs: soft targets at T=1 (weight alpha=0.9) and hard targets
    (1 - alpha; labels, or the next tokens), plus hidden_cosine when the widths match: the
    DistilBERT triple with a lower temperature, which beat T=4 there. Embeddings:
    embedding_mse summed over the embedding (the squared distance per text, so that it
    weighs the same at any width: the mean over a 384-wide MiniLM's dimensions let the
    cosine term take over), plus hidden_cosine when the widths match. A spec that states
    its own `distillation` section keeps its temperature and alpha; one that states none
    gets the transformer default recipe (worker.kd.spec.DEFAULT_RECIPES), these measured
    values. A term whose weight alpha makes 0 is left out (alpha 0: no soft targets, so
    the teacher's logits are neither computed nor cached for them).
    """
    temperature, alpha = spec.distillation.temperature, spec.distillation.alpha
    if not labeled and task != "causal_lm":
        alpha = 1.0
    if task == "sentence_embedding":
        embedding = {"kind": "embedding_mse", "weight": 1.0, "params": {"reduction": "sum"}}
        terms: list[dict[str, Any]] = [embedding]
    else:
        terms = []
        if alpha > 0.0:
            terms.append({"kind": "soft_ce", "weight": alpha,
                          "params": {"temperature": temperature}})  # fmt: skip
        if alpha < 1.0:
            terms.append({"kind": "ce", "weight": 1.0 - alpha})
    if same_width:
        terms.append({"kind": "hidden_cosine", "weight": 1.0})
    return terms


class TransformerObjective(nn.Module):
    """`objective(student_out, teacher_out, batch, labels)` -> (total, {term: value})."""

    def __init__(self, task: str, terms: list[Term]) -> None:
        super().__init__()
        self.task = task
        self.terms = terms
        self.losses = nn.ModuleList([t.loss for t in terms])

    @property
    def needs_hidden(self) -> bool:
        return any(t.loss.key == "hidden_cosine" for t in self.terms)

    @property
    def needs_attentions(self) -> bool:
        return any(t.loss.key == "self_attention_kl" for t in self.terms)

    @property
    def reads_teacher_output(self) -> bool:
        """Whether a term compares the teacher's task output (logits or embedding): any
        term on the outputs but those on labels alone (ce)."""
        return any(not t.pairs and t.loss.family != "label" for t in self.terms)

    def forward(
        self,
        student: Outputs,
        teacher: Outputs,
        batch: dict[str, torch.Tensor],
        labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch["attention_mask"].bool()  # (B, T)
        learned = target_mask(batch)  # (B, T): completions only, where rows have prompts
        s_out = self.rows(student.output, learned)
        # Without a term on it the teacher's output may be absent (not computed, not cached).
        t_out = self.rows(teacher.output, learned) if self.reads_teacher_output else s_out.detach()
        targets = next_tokens(batch["input_ids"], learned) if self.task == "causal_lm" else labels
        top = teacher.top_k.rows(learned) if teacher.top_k is not None else None
        total = torch.zeros((), device=mask.device)
        parts: dict[str, torch.Tensor] = {}
        for term in self.terms:
            if term.pairs:
                value = self._layers(term, student, teacher, mask)
            elif top is not None and term.loss.family == "response":
                value = self._top_k(term, s_out, t_out, top, targets)
            else:
                value = term.loss.compute(LossInputs(s_out, t_out, targets))
            total = total + term.weight * value
            parts[term.name] = value.detach()
        return total, parts

    @property
    def temperatures(self) -> tuple[float, ...]:
        """The temperatures of the terms that compare next-token distributions (what
        top-k targets store normalisers for), in order, once each."""
        found = [kd_temperature(t.loss) for t in self.terms]
        return tuple(dict.fromkeys(t for t in found if t is not None))

    @staticmethod
    def _top_k(
        term: Term, s_out: torch.Tensor, values: torch.Tensor, top: TopK,
        targets: torch.Tensor | None,
    ) -> torch.Tensor:  # fmt: skip
        """A KD term on the k + 1 buckets of top-k targets (worker.kd.hf.topk): both
        sides' bucket log-probabilities, as logits the term's own temperature undoes."""
        t = kd_temperature(term.loss)
        assert t is not None  # build_objective refuses other response terms with top_k
        s_log, t_log = bucket_log_probs(s_out, values, top, t)  # (N, k + 1) each
        return term.loss.compute(LossInputs(as_logits(s_log, t), as_logits(t_log, t), targets))

    def rows(self, output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-sample rows (B, K) or, for next-token logits, one row per predicted token that
        `mask` (B, T) marks (N, V)."""
        if self.task != "causal_lm":
            return output
        return output[:, :-1][mask[:, 1:]]  # (N, V)

    def _layers(self, term: Term, student: Outputs, teacher: Outputs, mask: torch.Tensor) -> Any:
        values = []
        for s_layer, t_layer in term.pairs:
            if term.loss.key == "hidden_cosine":
                s, t = student.hidden_states[s_layer][mask], teacher.hidden_states[t_layer][mask]
            else:  # (B, heads, T, T) -> one row of (heads, T) per real query token
                s = attention_log_probs(student.attentions[s_layer - 1].transpose(1, 2)[mask])
                t = teacher.attentions[t_layer - 1].transpose(1, 2)[mask]
            values.append(term.loss.compute(LossInputs(s, t, None, s, t)))
        return torch.stack(values).mean()


def kd_temperature(loss: DistillationLoss) -> float | None:
    """The temperature of a term comparing softened distributions (soft_ce, kd,
    reverse_kl, jsd), None for any other."""
    value = getattr(loss, "temperature", None)
    return float(value) if loss.family == "response" and isinstance(value, int | float) else None


def next_tokens(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return input_ids[:, 1:][mask[:, 1:]]  # (N,)


def build_objective(
    spec: JobSpec,
    task: str,
    labeled: bool,
    student_config: Any,
    teacher_config: Any,
    mapping: list[int],
) -> TransformerObjective:
    """The spec's terms (or the task's defaults), checked against the two models."""
    s_width, t_width = _width(student_config), _width(teacher_config)
    if spec.distillation.losses:
        raw = [t.model_dump(exclude_none=True) for t in spec.distillation.losses]
    else:
        raw = default_terms(spec, task, labeled, s_width == t_width)
    terms = [
        _term(i, r, task, labeled, mapping, (s_width, t_width), (student_config, teacher_config))
        for i, r in enumerate(raw)
    ]
    if task == "causal_lm" and spec.distillation.method == "top_k":
        for i, term in enumerate(terms):
            if term.loss.family == "response" and kd_temperature(term.loss) is None:
                raise InvalidSpec(
                    f"distillation.losses[{i}]: {term.name!r} compares whole logit vectors; "
                    "method top_k keeps the teacher's top-k logits per token: use soft_ce, kd, "
                    "reverse_kl or jsd."
                )
    names = [t.name for t in terms]
    for i, term in enumerate(terms):
        if names.count(term.name) > 1:
            term.name = f"{term.name}_{names[: i + 1].count(term.name)}"
    return TransformerObjective(task, terms)


def _width(config: Any) -> int:
    return int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))


def _term(
    index: int,
    raw: dict[str, Any],
    task: str,
    labeled: bool,
    mapping: list[int],
    widths: tuple[int, int],
    configs: tuple[Any, Any],
) -> Term:
    kind, where = raw["kind"], f"distillation.losses[{index}]"
    if kind not in TRANSFORMER_KINDS:
        raise InvalidSpec(
            f"{where}: {kind!r} is not a transformer loss; use {', '.join(TRANSFORMER_KINDS)}."
        )
    if kind == "ce" and task == "sequence_classification" and not labeled:
        raise InvalidSpec(f"{where}: 'ce' needs labels; the dataset has none.")
    if kind == "ce" and task == "sentence_embedding":
        raise InvalidSpec(f"{where}: 'ce' needs logits; a sentence_embedding model has none.")
    if kind in ("soft_ce", "kd", "logit_mse") and task not in LOGIT_TASKS:
        raise InvalidSpec(f"{where}: {kind!r} compares logits; use embedding_mse for embeddings.")
    if kind == "embedding_mse" and (task != "sentence_embedding" or widths[0] != widths[1]):
        raise InvalidSpec(
            f"{where}: embedding_mse compares sentence embeddings of one width (the student "
            f"has {widths[0]}, the teacher {widths[1]}); keep hidden_size for embedding students."
        )
    try:
        loss = get_loss(kind, **raw.get("params", {}))
    except ValueError as exc:
        raise InvalidSpec(f"{where}: {exc}") from exc
    pairs = _pairs(where, kind, raw, mapping, configs) if loss_info(kind).needs_layers else []
    if kind == "hidden_cosine" and widths[0] != widths[1]:
        raise InvalidSpec(
            f"{where}: hidden_cosine needs equal widths (student {widths[0]}, teacher "
            f"{widths[1]}); use a from_teacher student or keep hidden_size."
        )
    return Term(kind, float(raw.get("weight", 1.0)), loss, pairs)


def _pairs(
    where: str, kind: str, raw: dict[str, Any], mapping: list[int], configs: tuple[Any, Any]
) -> list[tuple[int, int]]:
    depths = [len(mapping), _depth(configs[1])]
    if raw.get("student_layer") is not None:
        try:
            pair = (int(raw["student_layer"]), int(raw["teacher_layer"]))
        except ValueError as exc:
            raise InvalidSpec(f"{where}: layers are layer numbers (1..L; 0: embeddings).") from exc
        low = 0 if kind == "hidden_cosine" else 1
        for side, layer, depth in zip(("student", "teacher"), pair, depths, strict=True):
            if not low <= layer <= depth:
                raise InvalidSpec(f"{where}: {side} layer {layer} is not in {low}..{depth}.")
        return [pair]
    if kind == "self_attention_kl":
        return [(len(mapping), mapping[-1])]
    return [(j + 1, t) for j, t in enumerate(mapping)]


def _depth(config: Any) -> int:
    return int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))


def baseline_objective(task: str) -> TransformerObjective:
    """Cross-entropy alone (labels; next tokens for causal_lm): the student trained without
    its teacher, to measure what distillation adds. Sentence embeddings have no such target."""
    if task == "sentence_embedding":
        raise InvalidSpec("A sentence_embedding model has no target to train on without a teacher.")
    return TransformerObjective(task, [Term("ce", 1.0, get_loss("ce"))])


def teacher_layers(objective: TransformerObjective) -> tuple[list[int], list[int]]:
    """The teacher's hidden states (0: embeddings) and attention maps (0-based) the terms
    read, as `TransformerObjective._layers` indexes them."""
    hidden: set[int] = set()
    attentions: set[int] = set()
    for term in objective.terms:
        for _, t_layer in term.pairs:
            if term.loss.key == "hidden_cosine":
                hidden.add(t_layer)
            else:
                attentions.add(t_layer - 1)
    return sorted(hidden), sorted(attentions)
