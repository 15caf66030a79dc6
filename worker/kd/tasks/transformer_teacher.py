"""The teacher's outputs on the training texts, computed once and reused: across the
epochs of a job and across jobs (`worker.kd.training.teacher_cache`, for transformers).

Transformer jobs augment nothing, so a text's teacher outputs are the same every epoch.
They are computed once per example, trimmed to the example's real tokens (the batch it is
later padded into then does not matter), kept on the CPU, and put back into each padded
training batch where the online teacher puts them: the objective reads the same values at
every real token either way. Through `TeacherCache` they are also kept on disk, keyed by
teacher file, dataset file, split, max_length and the outputs needed, so the next job with
that key starts from them. Their size is known before they are computed; when it is over
the cap (causal LM logits are tokens x vocabulary), the teacher runs online instead. That
policy is `worker.kd.training.teacher_sources`'s, shared with tensor jobs; this module is
its `PackedPlan`: how text outputs are sized, computed, packed, stored and keyed.

For a causal LM with `distillation.method: top_k` the plan keeps, per token, the teacher's
top-k logits and what the rest-of-mass bucket needs at each KD temperature
(`worker.kd.hf.topk`) instead of the V logits: the key then names k and the
temperatures. When the teacher runs online, each batch's logits are cut to the same
top-k targets, so the method means the same whichever source the outputs come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from worker.kd.hf.data import Encoded
from worker.kd.hf.layout import ModelLayout
from worker.kd.hf.models import Outputs, forward
from worker.kd.hf.objective import TransformerObjective, teacher_layers
from worker.kd.hf.topk import TopK, top_k_targets
from worker.kd.jobs import HFPrepared
from worker.kd.training.reporting import Reporter
from worker.kd.training.teacher_cache import TeacherCache, TeacherOutputs, cache_key, file_sha256
from worker.kd.training.teacher_sources import CachedTeacher, OnlineTeacher, cached_outputs

COMPUTE_BATCH = 32
LENGTHS = "lengths"
TOP_INDICES, TOP_NORMS = "topk.indices", "topk.norms"


@dataclass(frozen=True)
class Needed:
    """The teacher outputs the objective reads: the task's output (per example, or per
    token for next-token logits) and the hidden states and attention maps its terms pair."""

    per_token: bool
    hidden: tuple[int, ...] = ()  # hidden_states indices (0: embeddings)
    attentions: tuple[int, ...] = ()  # attentions indices (0: the first layer)
    top_k: int = 0  # > 0: the teacher's top-k logits per token instead of all of them
    temperatures: tuple[float, ...] = ()  # top_k: the KD temperatures normalisers are for
    # False when no term compares the output (only ce, and layer terms): none is kept then.
    output: bool = True

    @property
    def anything(self) -> bool:
        """Whether the objective reads the teacher at all."""
        return self.output or bool(self.hidden) or bool(self.attentions)

    def names(self) -> list[str]:
        """The cache entry's tensors besides the output."""
        top = [TOP_INDICES, TOP_NORMS] if self.top_k else []
        return [LENGTHS, *(f"hidden.{i}" for i in self.hidden),
                *(f"attention.{i}" for i in self.attentions), *top]  # fmt: skip


@dataclass
class PackedOutputs:
    """Every training example's teacher outputs over its real tokens, concatenated."""

    needed: Needed
    lengths: torch.Tensor  # (N,) int64, real tokens per example
    output: torch.Tensor  # (N, K) | (N, D) per example; (sum T, V) per token
    hidden: dict[int, torch.Tensor]  # layer -> (sum T, H)
    attentions: dict[int, torch.Tensor]  # layer -> (sum T^2, heads): (T, T, heads) per example
    # top_k: "topk.indices" (sum T, k) int32 and "topk.norms" (sum T, 2 * temperatures);
    # `output` then holds the k values (sum T, k).
    top: dict[str, torch.Tensor] = field(default_factory=dict)
    token_offsets: list[int] = field(init=False, repr=False)  # N + 1, into sum T
    square_offsets: list[int] = field(init=False, repr=False)  # N + 1, into sum T^2

    def __post_init__(self) -> None:
        self.token_offsets = [0, *self.lengths.cumsum(0).tolist()]
        self.square_offsets = [0, *(self.lengths**2).cumsum(0).tolist()]

    @property
    def nbytes(self) -> int:
        tensors = [self.lengths, self.output, *self.hidden.values(), *self.attentions.values(),
                   *self.top.values()]  # fmt: skip
        return sum(t.numel() * t.element_size() for t in tensors)

    def batch(self, idx: list[int], mask: torch.Tensor) -> Outputs:
        """The outputs of examples `idx` padded as `mask` (B, T) pads them; zeros at padding
        (the online teacher's attention to padding is zero too)."""
        device, (size, length) = mask.device, mask.shape
        starts, squares = self.token_offsets, self.square_offsets
        tokens = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in idx])  # (sum T,)
        if not self.needed.output:  # no term reads it (`TransformerObjective.reads_teacher_output`)
            output = self.output.new_empty(0, device=device)
        elif self.needed.per_token:
            output = self._scatter(self.output[tokens], mask)  # (B, T, V)
        else:
            output = self.output[idx].to(device)  # (B, K)
        hidden = self._layers({k: self._scatter(v[tokens], mask) for k, v in self.hidden.items()})
        attentions = {}
        for layer, flat in self.attentions.items():
            heads = flat.shape[1]
            maps = flat.new_zeros(size, heads, length, length, device=device)  # (B, h, T, T)
            for row, i in enumerate(idx):
                n = starts[i + 1] - starts[i]
                block = flat[squares[i] : squares[i + 1]].view(n, n, heads)  # (n, n, h)
                at = mask[row].nonzero().squeeze(1)  # (n,)
                maps[row][:, at[:, None], at[None, :]] = block.permute(2, 0, 1).to(device)
            attentions[layer] = maps
        top = None
        if self.needed.top_k:
            top = TopK(self._scatter(self.top[TOP_INDICES][tokens], mask).long(),
                       self._scatter(self.top[TOP_NORMS][tokens], mask),
                       self.needed.temperatures)  # fmt: skip
        return Outputs(output, hidden, self._layers(attentions), top)

    @staticmethod
    def _scatter(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        full = rows.new_zeros(*mask.shape, rows.shape[-1], device=mask.device)  # (B, T, W)
        full[mask] = rows.to(mask.device)
        return full

    @staticmethod
    def _layers(by_index: dict[int, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """A tuple indexed as the model's; layers no term reads are empty."""
        if not by_index:
            return ()
        empty = next(iter(by_index.values())).new_empty(0)
        return tuple(by_index.get(i, empty) for i in range(max(by_index) + 1))

    def to_cache(self) -> TeacherOutputs:
        features = {LENGTHS: self.lengths}
        features.update({f"hidden.{k}": v for k, v in self.hidden.items()})
        features.update({f"attention.{k}": v for k, v in self.attentions.items()})
        features.update(self.top)
        return TeacherOutputs(self.output, features)

    @classmethod
    def from_cache(cls, stored: TeacherOutputs, needed: Needed) -> PackedOutputs:
        features = stored.features
        return cls(
            needed, features[LENGTHS], stored.logits,
            {i: features[f"hidden.{i}"] for i in needed.hidden},
            {i: features[f"attention.{i}"] for i in needed.attentions},
            {name: features[name] for name in (TOP_INDICES, TOP_NORMS) if needed.top_k},
        )  # fmt: skip

    def matches(self, lengths: torch.Tensor) -> bool:
        """Whether this entry fits training examples of these lengths."""
        if not torch.equal(self.lengths, lengths):
            return False
        tokens, squares = self.token_offsets[-1], self.square_offsets[-1]
        rows = _output_rows(self.needed, tokens, len(lengths))
        top_widths = [self.output.shape[-1], 2 * len(self.needed.temperatures)]
        return (
            len(self.output) == rows
            and [v.shape[-1] for v in self.top.values()]
            == (top_widths if self.needed.top_k else [])
            and all(len(v) == tokens for v in (*self.hidden.values(), *self.top.values()))
            and all(len(v) == squares for v in self.attentions.values())
        )


@dataclass(frozen=True)
class OutputShapes:
    """Widths and dtypes of one forward pass's outputs (from one example)."""

    output: tuple[int, torch.dtype]
    hidden: tuple[int, torch.dtype] | None
    attentions: tuple[int, torch.dtype] | None  # heads


def probe_shapes(
    model: Any, task: str, data: Encoded, tokenizer: Any, layout: ModelLayout | None,
    device: torch.device, needed: Needed,
) -> OutputShapes:  # fmt: skip
    """The output sizes, from one forward pass on the first training example."""
    batch = data.batch([0], tokenizer, device)
    with torch.no_grad():
        out = forward(model, task, batch, layout, hidden=bool(needed.hidden),
                      attentions=bool(needed.attentions))  # fmt: skip
    hidden = out.hidden_states[0] if needed.hidden else None  # (1, T, H)
    maps = out.attentions[0] if needed.attentions else None  # (1, heads, T, T)
    return OutputShapes(
        (out.output.shape[-1], out.output.dtype),
        None if hidden is None else (hidden.shape[-1], hidden.dtype),
        None if maps is None else (maps.shape[1], maps.dtype),
    )


def _allocate(needed: Needed, lengths: torch.Tensor, shapes: OutputShapes) -> PackedOutputs:
    """Empty outputs of the right sizes: `.nbytes` is what computing them will take."""
    tokens, squares = int(lengths.sum()), int((lengths**2).sum())
    width, dtype = _output_width(needed, shapes)
    output = torch.empty(_output_rows(needed, tokens, len(lengths)), width, dtype=dtype)
    top = {}
    if needed.top_k:
        top = {TOP_INDICES: torch.empty(tokens, width, dtype=torch.int32),
               TOP_NORMS: torch.empty(tokens, 2 * len(needed.temperatures))}  # fmt: skip
    hidden, attentions = {}, {}
    if shapes.hidden is not None:
        hidden = {i: torch.empty(tokens, shapes.hidden[0], dtype=shapes.hidden[1])
                  for i in needed.hidden}  # fmt: skip
    if shapes.attentions is not None:
        attentions = {i: torch.empty(squares, shapes.attentions[0], dtype=shapes.attentions[1])
                      for i in needed.attentions}  # fmt: skip
    return PackedOutputs(needed, lengths, output, hidden, attentions, top)


def _output_rows(needed: Needed, tokens: int, examples: int) -> int:
    """Rows of the stored output: one per token (next-token logits), one per example, or
    none when no term reads it."""
    if not needed.output:
        return 0
    return tokens if needed.per_token else examples


def _output_width(needed: Needed, shapes: OutputShapes) -> tuple[int, torch.dtype]:
    """The stored output per row: all V logits, or top-k values in float32."""
    if needed.top_k:
        return min(needed.top_k, shapes.output[0]), torch.float32
    return shapes.output


def estimate_bytes(needed: Needed, lengths: torch.Tensor, shapes: OutputShapes) -> int:
    """What `_allocate` will take, counted before anything is allocated."""
    tokens, squares = int(lengths.sum()), int((lengths**2).sum())
    width, dtype = _output_width(needed, shapes)
    rows = _output_rows(needed, tokens, len(lengths))
    total = len(lengths) * lengths.element_size() + rows * width * dtype.itemsize
    if needed.top_k:  # int32 indices, float32 normalisers
        total += tokens * (width * 4 + 2 * len(needed.temperatures) * 4)
    if shapes.hidden is not None:
        total += len(needed.hidden) * tokens * shapes.hidden[0] * shapes.hidden[1].itemsize
    if shapes.attentions is not None:
        heads, maps = shapes.attentions
        total += len(needed.attentions) * squares * heads * maps.itemsize
    return total


def compute_outputs(
    model: Any, task: str, data: Encoded, tokenizer: Any, layout: ModelLayout | None,
    device: torch.device, needed: Needed, shapes: OutputShapes,
) -> PackedOutputs:  # fmt: skip
    """Run the teacher over the training examples, in order, and keep their real tokens."""
    lengths = torch.tensor([len(f["input_ids"]) for f in data.features])
    packed = _allocate(needed, lengths, shapes)
    tokens, squares = packed.token_offsets, packed.square_offsets
    for start in range(0, len(data), COMPUTE_BATCH):
        idx = list(range(start, min(start + COMPUTE_BATCH, len(data))))
        batch = data.batch(idx, tokenizer, device)
        mask = batch["attention_mask"].bool()  # (B, T)
        with torch.no_grad():
            out = forward(model, task, batch, layout, hidden=bool(needed.hidden),
                          attentions=bool(needed.attentions))  # fmt: skip
        first, last = tokens[idx[0]], tokens[idx[-1] + 1]
        if not needed.output:
            pass  # no term reads it: nothing kept
        elif needed.top_k:
            values, top = top_k_targets(out.output[mask], needed.top_k, needed.temperatures)
            packed.output[first:last] = values.cpu()  # (sum T, k)
            packed.top[TOP_INDICES][first:last] = top.indices.to(torch.int32).cpu()
            packed.top[TOP_NORMS][first:last] = top.norms.cpu()  # (sum T, 2 * temperatures)
        elif needed.per_token:
            packed.output[first:last] = out.output[mask].cpu()  # (sum T, V)
        else:
            packed.output[idx[0] : idx[-1] + 1] = out.output.cpu()  # (B, K)
        for layer, flat in packed.hidden.items():
            flat[first:last] = out.hidden_states[layer][mask].cpu()  # (sum T, H)
        for layer, flat in packed.attentions.items():
            for row, i in enumerate(idx):
                at = mask[row].nonzero().squeeze(1)  # (n,)
                maps = out.attentions[layer][row][:, at[:, None], at[None, :]]  # (h, n, n)
                flat[squares[i] : squares[i + 1]] = (
                    maps.permute(1, 2, 0).reshape(-1, maps.shape[0]).cpu()
                )  # (n * n, h)
    return packed


# Sources ----------------------------------------------------------------------------------


def online_teacher(
    model: Any, task: str, layout: ModelLayout | None, hidden: bool, attentions: bool,
    needed: Needed | None = None,
) -> OnlineTeacher[Outputs]:  # fmt: skip
    """Runs the teacher on each training batch (its logits cut to top-k targets when
    `needed` asks for them)."""

    def run(batch: dict[str, torch.Tensor]) -> Outputs:
        out = forward(model, task, batch, layout, hidden=hidden, attentions=attentions)
        if needed is None or not needed.top_k:
            return out
        values, top = top_k_targets(out.output, needed.top_k, needed.temperatures)
        return Outputs(values, out.hidden_states, out.attentions, top)

    return OnlineTeacher(run)


def cached_teacher(packed: PackedOutputs, online: OnlineTeacher[Outputs]) -> CachedTeacher[Outputs]:
    """Outputs computed once, put back into each batch's padding."""
    return CachedTeacher(
        lambda idx, batch: packed.batch(idx, batch["attention_mask"].bool()), online
    )


@dataclass
class PackedPlan:
    """`training.teacher_sources.OutputsPlan` of a transformer teacher over the training
    texts: the outputs `needed`, packed over each text's real tokens."""

    prepared: HFPrepared
    needed: Needed
    noun: str = "texts"
    _shapes: OutputShapes | None = field(default=None, init=False, repr=False)

    @property
    def count(self) -> int:
        return len(self.prepared.train)

    @property
    def lengths(self) -> torch.Tensor:
        return torch.tensor([len(f["input_ids"]) for f in self.prepared.train.features])

    def key(self) -> str:
        return cache_key_of(self.prepared, self.needed)

    def names(self) -> list[str]:
        return self.needed.names()

    def restore(self, stored: TeacherOutputs) -> PackedOutputs | None:
        packed = PackedOutputs.from_cache(stored, self.needed)
        return packed if packed.matches(self.lengths) else None

    def _args(self) -> tuple[Any, str, Encoded, Any, ModelLayout | None, torch.device]:
        prepared, teacher = self.prepared, self.prepared.teacher
        return (teacher.model, prepared.task, prepared.train, teacher.tokenizer, teacher.layout,
                prepared.device)  # fmt: skip

    def shapes(self) -> OutputShapes:
        if self._shapes is None:
            self._shapes = probe_shapes(*self._args(), self.needed)
        return self._shapes

    def size(self) -> int:
        return estimate_bytes(self.needed, self.lengths, self.shapes())

    def compute(self) -> PackedOutputs:
        return compute_outputs(*self._args(), self.needed, self.shapes())

    def store(self, outputs: PackedOutputs) -> TeacherOutputs:
        return outputs.to_cache()

    def nbytes(self, outputs: PackedOutputs) -> int:
        return outputs.nbytes

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"hidden_states": list(self.needed.hidden),
                                   "attentions": list(self.needed.attentions)}  # fmt: skip
        if self.needed.per_token:
            vocab, dtype = self.shapes().output
            details.update(tokens=int(self.lengths.sum()), top_k=self.needed.top_k or None,
                           dense_bytes_per_token=vocab * dtype.itemsize)  # fmt: skip
        return details


def teacher_source(
    prepared: HFPrepared,
    objective: TransformerObjective,
    reporter: Reporter,
    cache: TeacherCache | None,
    augmented: bool = False,
) -> OnlineTeacher[Outputs] | CachedTeacher[Outputs] | None:
    """Cached outputs when `distillation.cache_teacher` allows and they fit; else online
    (the policy: `training.teacher_sources.cached_outputs`). `augmented`: the texts are
    corrupted anew each batch (`distillation.augment.tokens`), so the teacher runs online.
    None when no term reads the teacher (ce alone): the teacher then runs on no training
    text."""
    teacher, task = prepared.teacher, prepared.task
    hidden, attentions = teacher_layers(objective)
    needed = needed_outputs(prepared, objective, hidden, attentions)
    if not needed.anything:
        return None
    online = online_teacher(teacher.model, task, teacher.layout, objective.needs_hidden,
                            objective.needs_attentions, needed)  # fmt: skip
    reason = None
    if augmented:
        reason = "the texts are augmented (distillation.augment.tokens), new in every batch"
    elif getattr(teacher.tokenizer, "padding_side", "right") != "right":
        reason = "the tokenizer pads on the left, so a text's positions depend on its batch"
    plan = PackedPlan(prepared, needed)
    packed = cached_outputs(plan, reporter, cache, enabled=prepared.spec.distillation.cache_teacher,
                            online_reason=reason)  # fmt: skip
    return online if packed is None else cached_teacher(packed, online)


def needed_outputs(
    prepared: HFPrepared, objective: TransformerObjective, hidden: list[int], attentions: list[int]
) -> Needed:
    """What the objective reads of the teacher: its output when a term compares it
    (per-token logits for a causal LM, all or top-k with the terms' temperatures), and the
    layers its terms pair."""
    causal = prepared.task == "causal_lm"
    output = objective.reads_teacher_output
    top_k = (
        prepared.spec.distillation.top_k
        if output and causal and prepared.spec.distillation.method == "top_k"
        else 0
    )
    return Needed(causal, tuple(hidden), tuple(attentions), top_k,
                  objective.temperatures if top_k else (), output)  # fmt: skip


def cache_key_of(prepared: HFPrepared, needed: Needed) -> str:
    """Same teacher file, texts, split and truncation, same outputs: same teacher outputs."""
    spec = prepared.spec
    assert prepared.dataset_path is not None  # transformer jobs take uploaded texts
    return cache_key(
        {
            "kind": "transformer",
            "teacher": file_sha256(prepared.teacher_path),
            "task": prepared.task,
            "dataset": file_sha256(prepared.dataset_path),
            "dataset_format": spec.dataset.format,
            "max_length": spec.dataset.max_length,
            "split": [spec.training.val_fraction, spec.training.seed],
            # the training texts are what is left of the dataset after selection and
            # evaluation (or selection alone, beside an evaluation file)
            "splits": "three" if prepared.eval_dataset_path is None else "eval_file",
            "outputs": {"output": needed.output, "per_token": needed.per_token,
                        "hidden_states": list(needed.hidden),
                        "attentions": list(needed.attentions), "top_k": needed.top_k,
                        "temperatures": list(needed.temperatures)},
        }
    )  # fmt: skip
