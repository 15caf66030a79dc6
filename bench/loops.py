"""The training loops under test: two hand-written ones and Distillery's engine.

Each returns the wall-clock time (`time.perf_counter()`) and the process's CPU time
(`time.process_time()`) at the end of every epoch (after that epoch's validation pass), so
an epoch's time is the gap between two ends and the first epoch (warm-up) and the setup
before it are left out alike. CPU time is the cross-check on a machine other work shares:
it does not count the time the process waited for a core.

The hand-written loops follow the PyTorch knowledge-distillation tutorial
(https://pytorch.org/tutorials/beginner/knowledge_distillation_tutorial.html): shuffled
batches, the teacher run under `no_grad` at every step, the tutorial's soft-target loss
`sum(p_t * (log p_t - log p_s)) / B * T^2` weighted against cross-entropy, `loss.item()`
summed each step. They use the engine's recipe (AdamW, a cosine schedule stepped per batch,
gradient clipping at 1.0, validation accuracy once per epoch) so that a ratio measures the
engine's machinery, not a different recipe; batches are drawn by index from tensors in
memory, as the engine does.
"""

from __future__ import annotations

import inspect
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.workloads import SEED, Workload
from worker.kd.training.reporting import MemoryReporter

Stamp = tuple[float, float]  # (wall, cpu) seconds


def stamp() -> Stamp:
    return time.perf_counter(), time.process_time()


@dataclass
class Run:
    epoch_ends: list[Stamp]
    accuracy: float
    marks: list[tuple[str, float]] = field(default_factory=list)  # engine events, wall time
    teacher_calls: list[int] = field(default_factory=list)  # per epoch, when counted

    @property
    def epoch_seconds(self) -> list[float]:
        """Wall time of every epoch but the first: the gaps between epoch ends."""
        ends = [wall for wall, _ in self.epoch_ends]
        return [b - a for a, b in itertools.pairwise(ends)]

    @property
    def epoch_cpu_seconds(self) -> list[float]:
        ends = [cpu for _, cpu in self.epoch_ends]
        return [b - a for a, b in itertools.pairwise(ends)]


def build_student(workload: Workload) -> nn.Module:
    """The student the engine would build for this workload, with the engine's init."""
    from worker.kd.spec import JobSpec
    from worker.kd.students import build_student as build

    spec = JobSpec.model_validate(workload.spec())
    torch.manual_seed(SEED)
    return build(spec.student, tuple(workload.x.shape[1:]), int(workload.y.max()) + 1)


def tutorial_kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float, alpha: float
) -> torch.Tensor:
    soft_targets = F.softmax(teacher / t, dim=-1)  # (B, K)
    soft_prob = F.log_softmax(student / t, dim=-1)  # (B, K)
    soft_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size(0)
    return alpha * soft_loss * t**2 + (1 - alpha) * F.cross_entropy(student, labels)


def handwritten(workload: Workload, kd: bool, epochs: int, cached: bool = False) -> Run:
    """(a) student-only (kd=False: cross-entropy), (b) online KD (kd=True), or (e) KD from
    teacher logits computed once before training (kd=True, cached=True)."""
    student = build_student(workload)
    teacher = workload.teacher
    teacher.eval()
    x, y, batch = workload.x, workload.y, workload.batch_size
    all_teacher_logits = None
    if kd and cached:
        # A copy of its own: other batch sizes would move the shared TorchScript teacher's
        # profiling executor off the plan (b) runs on.
        own = torch.jit.load(str(workload.teacher_path), map_location="cpu").eval()
        with torch.no_grad():
            chunks = [own(x[i : i + 1024]) for i in range(0, len(x), 1024)]
        all_teacher_logits = torch.cat(chunks)  # (N, K)
    steps = epochs * math.ceil(len(x) / batch)
    optimizer = torch.optim.AdamW(student.parameters(), lr=workload.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))
    )
    generator = torch.Generator().manual_seed(SEED)
    ends: list[Stamp] = []
    accuracy = 0.0
    for _ in range(epochs):
        student.train()
        running_loss = 0.0
        for idx in torch.randperm(len(x), generator=generator).split(batch):
            inputs, labels = x[idx], y[idx]
            logits = student(inputs)
            if kd:
                if all_teacher_logits is not None:
                    teacher_logits = all_teacher_logits[idx]
                else:
                    with torch.no_grad():
                        teacher_logits = teacher(inputs)
                loss = tutorial_kd_loss(
                    logits, teacher_logits, labels, workload.temperature, workload.alpha
                )
            else:
                loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            running_loss += loss.item()
        student.eval()
        with torch.inference_mode():
            predicted = student(workload.x_val).argmax(dim=1)
        accuracy = (predicted == workload.y_val).float().mean().item()
        ends.append(stamp())
    return Run(ends, accuracy)


@dataclass
class TimingReporter(MemoryReporter):
    """A MemoryReporter that also notes when each event happened."""

    marks: list[tuple[str, float]] = field(default_factory=list)
    epoch_ends: list[Stamp] = field(default_factory=list)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.note(kind)
        super().event(kind, message, data)

    def note(self, kind: str) -> None:
        now = stamp()
        self.marks.append((kind, now[0]))
        if kind == "epoch_end":
            self.epoch_ends.append(now)


class CountingTeacher(nn.Module):
    """Counts forward calls of the teacher (the cache probe only; never timed)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = self.inner(x)
        return out


def engine_kwargs(distill: Any, work: Path) -> dict[str, Any]:
    """Keyword arguments `distill` takes beyond (prepared, out_dir, reporter): the on-disk
    teacher-output cache the worker passes (DISTILLERY_TEACHER_CACHE_*), where the engine
    takes one. It only matters with `cache_teacher: true`."""
    params = inspect.signature(distill).parameters
    kwargs: dict[str, Any] = {}
    for name in ("cache", "teacher_cache"):
        if name in params:
            from worker.kd.training.teacher_cache import TeacherCache

            kwargs[name] = TeacherCache(work / "teacher-cache", 2 * 1024**3)
    return kwargs


def engine(
    workload: Workload,
    epochs: int,
    work: Path,
    *,
    cache: bool = False,
    reporter: Any = None,
    count_teacher: bool = False,
) -> Run:
    """(c) Distillery's engine online (cache=False) or (d) with the teacher-output cache:
    `prepare` then `distill`, as the worker runs them, without checkpoints."""
    from worker.kd.engine import distill, prepare
    from worker.kd.spec import JobSpec

    spec = JobSpec.model_validate(workload.spec(epochs, cache_teacher=cache))
    timing = TimingReporter()
    prepared = prepare(spec, workload.teacher_path, workload.dataset_path)
    counter = None
    if count_teacher:
        counter = CountingTeacher(prepared.teacher)  # type: ignore[arg-type]
        prepared.teacher = counter
    calls: list[int] = []
    inner = reporter if reporter is not None else timing

    class Tee:
        """Times events, forwards everything to the reporter under test."""

        def progress(self, fraction: float, *, epoch: int, step: int) -> None:
            inner.progress(fraction, epoch=epoch, step=step)

        def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
            inner.metric(name, value, step=step, epoch=epoch)

        def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
            timing.note(kind)
            if counter is not None and kind in ("training_started", "epoch_end"):
                calls.append(counter.calls)
            if inner is not timing:
                inner.event(kind, message, data)

        def should_stop(self) -> bool:
            return bool(inner.should_stop())

    out = work / "engine-out"
    tee: Any = Tee()
    result = distill(prepared, out, tee, **engine_kwargs(distill, work))
    per_epoch = [b - a for a, b in itertools.pairwise(calls)]
    return Run(
        timing.epoch_ends,
        float(result.report["student"]["accuracy"]),
        marks=timing.marks,
        teacher_calls=per_epoch,
    )


def phase_seconds(marks: list[tuple[str, float]], start: str, end: str) -> float | None:
    """Seconds from the last `start` event to the last `end` event (None if either is
    missing)."""
    starts = [t for kind, t in marks if kind == start]
    ends = [t for kind, t in marks if kind == end]
    if not starts or not ends:
        return None
    return ends[-1] - starts[-1]
