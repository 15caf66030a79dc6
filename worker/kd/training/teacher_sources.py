"""Where a job's teacher outputs come from: the teacher run online on each batch, or its
outputs on the training set computed once (or reused from an earlier job through the shared
`TeacherCache`) and indexed per batch. The policy is here, once, for every task kind:

- online when `distillation.cache_teacher` is off, or when batches are augmented (a
  batch's inputs then differ every epoch), silently;
- online, with a `teacher_cache` event saying why, when the task gives a reason (e.g. a
  tokenizer that pads on the left) or when the outputs' size, known before computing
  them, is over the cap (`MAX_IN_MEMORY_BYTES`, or the disk cache's if smaller);
- else reused from the cache when an entry with the job's key fits, or computed once and
  stored; a `teacher_cache` event says which, with the size and the seconds it took.

What differs per task is an `OutputsPlan`: how the key is made, how outputs are sized,
computed, stored and restored: `DensePlan` here for a tensor teacher (logits and layer
outputs per sample), `tasks.transformer_teacher.PackedPlan` for texts (outputs over each
text's real tokens, packed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch

from worker.kd.training.features import module_features
from worker.kd.training.reporting import Reporter
from worker.kd.training.teacher_cache import TeacherCache, TeacherOutputs, cache_key

MAX_IN_MEMORY_BYTES = 2 * 1024**3  # the cap when there is no disk cache (or a larger one)
EVENT = "teacher_cache"

Out = TypeVar("Out")  # what a batch's teacher outputs are, for the task
S = TypeVar("S")  # the stored outputs of the whole training set


@dataclass
class OnlineTeacher(Generic[Out]):
    """Runs the teacher on each batch: `forward(batch)`, without gradients."""

    forward: Callable[[Any], Out]

    def __call__(self, idx: Any, x: Any, augmented: bool = False) -> Out:
        """Outputs for training examples `idx`, whose batch (inputs, or a tokenized
        batch) is `x`."""
        with torch.no_grad():
            return self.forward(x)


@dataclass
class CachedTeacher(Generic[Out]):
    """Outputs computed once for the training set, `select(idx, batch)` per batch; an
    augmented batch (whose inputs are not the stored ones) runs `online`."""

    select: Callable[[Any, Any], Out]
    online: OnlineTeacher[Out]

    def __call__(self, idx: Any, x: Any, augmented: bool = False) -> Out:
        if augmented:
            return self.online(idx, x)
        return self.select(idx, x)


class OutputsPlan(Protocol[S]):
    """What differs per task: the outputs on the training set, as `S`."""

    @property
    def noun(self) -> str:
        """What the training set counts: "samples", "texts"."""
        ...

    @property
    def count(self) -> int: ...

    def key(self) -> str:
        """The cache key: same teacher, data, split and outputs needed, same outputs."""
        ...

    def names(self) -> list[str]:
        """The cache entry's tensors besides the logits."""
        ...

    def restore(self, stored: TeacherOutputs) -> S | None:
        """A cache entry as outputs, or None when it does not fit this training set."""
        ...

    def size(self) -> int:
        """The bytes computing the outputs will take, counted before computing them."""
        ...

    def compute(self) -> S:
        """Run the teacher over the training set, in order."""
        ...

    def store(self, outputs: S) -> TeacherOutputs:
        """The outputs as a cache entry."""
        ...

    def nbytes(self, outputs: S) -> int: ...

    def details(self) -> dict[str, Any]:
        """Event fields naming the outputs (layers) besides source, seconds, bytes."""
        ...


def cached_outputs(
    plan: OutputsPlan[S],
    reporter: Reporter,
    cache: TeacherCache | None,
    *,
    enabled: bool,
    augmented: bool = False,
    online_reason: str | None = None,
) -> S | None:
    """The training set's teacher outputs, reused or computed once; None: run it online."""
    if not enabled or augmented:
        return None
    if online_reason is not None:
        reporter.event(EVENT, f"The teacher runs online each step: {online_reason}.",
                       {"source": "online", "reason": online_reason})  # fmt: skip
        return None
    started = time.perf_counter()
    key = plan.key() if cache is not None else ""
    stored = cache.get(key, plan.names()) if cache is not None else None
    outputs = plan.restore(stored) if stored is not None else None
    source = "reused from an earlier job"
    if outputs is None:
        size = plan.size()
        cap = min(cache.max_bytes, MAX_IN_MEMORY_BYTES) if cache else MAX_IN_MEMORY_BYTES
        if size > cap:
            reason = f"its outputs would take {_mb(size)}, over the {_mb(cap)} cap"
            reporter.event(
                EVENT,
                f"The teacher runs online each step: for {plan.count} {plan.noun} {reason}.",
                {"source": "online", "reason": reason, "bytes": size, "cap": cap},
            )
            return None
        outputs = plan.compute()
        source = "computed once for this job"
        if cache is not None:
            cache.put(key, plan.store(outputs))
    seconds, nbytes = time.perf_counter() - started, plan.nbytes(outputs)
    reporter.event(
        EVENT,
        f"Teacher outputs for {plan.count} {plan.noun} {source} ({_mb(nbytes)}, "
        f"{seconds:.2f} s); no epoch runs the teacher.",
        {"source": source, "seconds": seconds, "bytes": nbytes, **plan.details()},
    )
    return outputs


# Dense outputs: a tensor teacher's logits and layer outputs, one row per sample ----------

TEACHER_BATCH = 1024
TeacherBatch = tuple[torch.Tensor, dict[str, torch.Tensor]]  # logits (B, K), layer -> (B, *S)


def teacher_forward(teacher: Any, x: torch.Tensor, layers: Sequence[str]) -> TeacherBatch:
    """Logits (B, K) and the named layers' outputs, whatever the teacher's format."""
    if not layers:
        return teacher(x), {}
    features = getattr(teacher, "features", None)
    if callable(features):
        logits, feats = features(x, list(layers))
        return logits, dict(feats)
    return module_features(teacher, x, layers)


def online_teacher(teacher: Any, layers: Sequence[str]) -> OnlineTeacher[TeacherBatch]:
    """Runs a tensor teacher on each batch, its outputs as float32."""

    def forward(x: torch.Tensor) -> TeacherBatch:
        logits, feats = teacher_forward(teacher, x, layers)
        return logits.float(), {k: v.float() for k, v in feats.items()}

    return OnlineTeacher(forward)


def cached_teacher(
    outputs: TeacherOutputs, online: OnlineTeacher[TeacherBatch], device: torch.device
) -> CachedTeacher[TeacherBatch]:
    """Rows `idx` of `outputs` for each batch, on `device`."""
    return CachedTeacher(lambda idx, x: outputs.batch(idx, device), online)


@dataclass
class DensePlan:
    """`OutputsPlan` of a tensor teacher over the training inputs `x` (N, *S); `key_parts`
    name the teacher, data and split for the cache key."""

    teacher: Any
    x: torch.Tensor
    device: torch.device
    layers: tuple[str, ...]
    key_parts: dict[str, Any]
    noun: str = "samples"

    @property
    def count(self) -> int:
        return len(self.x)

    def key(self) -> str:
        return cache_key({**self.key_parts, "layers": list(self.layers)})

    def names(self) -> list[str]:
        return list(self.layers)

    def restore(self, stored: TeacherOutputs) -> TeacherOutputs | None:
        return stored if len(stored.logits) == len(self.x) else None

    def size(self) -> int:
        with torch.no_grad():
            logits, feats = teacher_forward(self.teacher, self.x[:1].to(self.device), self.layers)
        row = [logits, *feats.values()]  # float32 once computed
        return self.count * sum(t[0].numel() * 4 for t in row)

    def compute(self) -> TeacherOutputs:
        logits, feats = [], []
        with torch.no_grad():
            for start in range(0, len(self.x), TEACHER_BATCH):
                batch = self.x[start : start + TEACHER_BATCH].to(self.device)
                out, f = teacher_forward(self.teacher, batch, self.layers)
                logits.append(out.float().cpu())
                feats.append({k: v.float().cpu() for k, v in f.items()})
        return TeacherOutputs(
            torch.cat(logits), {name: torch.cat([f[name] for f in feats]) for name in self.layers}
        )

    def store(self, outputs: TeacherOutputs) -> TeacherOutputs:
        return outputs

    def nbytes(self, outputs: TeacherOutputs) -> int:
        return outputs.nbytes

    def details(self) -> dict[str, Any]:
        return {"layers": list(self.layers)}


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
