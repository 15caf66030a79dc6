"""The transformer training loop: AdamW with warmup and cosine decay, nanoGPT's step order
(clip, step, zero_grad), and checkpoints that resume exactly.

As in `worker.kd.train`, a checkpoint keeps the shuffling generator's state from the start
of the current epoch and how many batches of that epoch are done, with the global RNG
(dropout), so a resumed run redraws the same order, skips what was done, and ends with the
same weights as a run that never stopped. It is written at epoch ends, every
`every_steps` steps, and when the run is asked to stop (then `Cancelled` is raised).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from worker.kd.checkpoint import (
    Checkpointing,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from worker.kd.errors import Cancelled
from worker.kd.hf.data import Encoded
from worker.kd.hf.layout import ModelLayout
from worker.kd.hf.models import Outputs, forward
from worker.kd.hf.objective import TransformerObjective
from worker.kd.reporting import Reporter
from worker.kd.spec import TrainingSpec
from worker.kd.train import adamw

METRIC_EVERY = 5  # steps between train_loss metrics

Metric = tuple[str, int, int, float]  # name, step, epoch, value (RecordingReporter.metrics)


class TeacherSource(Protocol):
    """The teacher's outputs for training examples `idx`, padded as `batch` is."""

    def __call__(self, idx: list[int], batch: dict[str, torch.Tensor]) -> Outputs: ...


@dataclass
class Outcome:
    epochs: int
    steps: int
    seconds: float


@dataclass
class _Position:
    """Where the run is: the epoch, how many of its batches are done, and the shuffling
    generator as it was when the epoch drew its order."""

    generator_state: torch.Tensor
    epoch: int = 1
    batches_done: int = 0
    step: int = 0
    seconds: float = 0.0  # training time of earlier runs of this job


def lr_factor(total: int, training: TrainingSpec) -> Callable[[int], float]:
    """The learning-rate factor at a step: linear warmup, then cosine decay over the run
    (`cosine`: no warmup; `constant`: 1)."""
    warmup = max(1, round(total * training.warmup_fraction))

    def factor(step: int) -> float:
        if training.schedule == "constant":
            return 1.0
        if step < warmup and training.schedule != "cosine":
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))

    return factor


@dataclass
class Trainer:
    """Trains `student` on `data` against `objective`. With no `teacher` (the baseline) the
    objective's teacher side is the student's own detached output, which a label-only
    objective never reads. `validate(step, epoch)` reports the epoch's validation metrics."""

    student: nn.Module
    objective: TransformerObjective
    teacher: TeacherSource | None
    data: Encoded
    tokenizer: Any
    layout: ModelLayout | None
    task: str
    training: TrainingSpec
    device: torch.device
    reporter: Reporter
    validate: Callable[[int, int], None]
    history: list[Metric] = field(default_factory=list)
    checkpointing: Checkpointing | None = None
    fingerprint: str = ""
    prefix: str = ""  # "baseline_" for the teacher-free run's metrics
    progress_span: tuple[float, float] = (0.0, 1.0)  # (offset, share) of the job's progress

    @property
    def total_steps(self) -> int:
        return math.ceil(len(self.data) / self.training.batch_size) * self.training.epochs

    def fit(self) -> Outcome:
        """Train to the last epoch, first resuming from the checkpoint if it holds this
        recipe's run; on a stop request, save and raise `Cancelled`."""
        spec = self.training
        params = [
            p for p in [*self.student.parameters(), *self.objective.parameters()] if p.requires_grad
        ]
        optimizer = adamw(params, spec.learning_rate, spec.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(self.total_steps, spec))
        generator = torch.Generator().manual_seed(spec.seed)
        position = _Position(generator.get_state())
        self._resume(optimizer, schedule, position)
        started = time.perf_counter()

        def save() -> None:
            self._save(optimizer, schedule, position, started)

        for epoch in range(position.epoch, spec.epochs + 1):
            generator.set_state(position.generator_state)
            order = torch.randperm(len(self.data), generator=generator).tolist()
            self.student.train()
            for start in range(position.batches_done * spec.batch_size, len(order),
                               spec.batch_size):  # fmt: skip
                if self.reporter.should_stop():
                    save()
                    raise Cancelled()
                self._step(order[start : start + spec.batch_size], params, optimizer, schedule,
                           position)  # fmt: skip
                every = self.checkpointing.every_steps if self.checkpointing else 0
                if every and position.step % every == 0:
                    save()
            self.validate(position.step, epoch)
            position.epoch, position.batches_done = epoch + 1, 0
            position.generator_state = generator.get_state()
            save()
        seconds = position.seconds + time.perf_counter() - started
        return Outcome(position.epoch - 1, position.step, seconds)

    def _step(
        self,
        idx: list[int],
        params: list[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        position: _Position,
    ) -> None:
        loss, parts = self.loss(idx)
        loss.backward()
        if self.training.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, self.training.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        position.step += 1
        position.batches_done += 1
        step, epoch, total = position.step, position.epoch, self.total_steps
        if step % METRIC_EVERY == 0 or step == total:
            self.reporter.metric(f"{self.prefix}train_loss", float(loss.detach()), step=step,
                                 epoch=epoch)  # fmt: skip
            for name, value in parts.items():
                self.reporter.metric(f"{self.prefix}loss_{name}", value, step=step, epoch=epoch)
        offset, share = self.progress_span
        self.reporter.progress(offset + share * step / total, epoch=epoch, step=step)

    def loss(self, idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        """The objective on training examples `idx` (one padded batch)."""
        objective = self.objective
        batch = self.data.batch(idx, self.tokenizer, self.device)  # each (B, T)
        hidden, attentions = objective.needs_hidden, objective.needs_attentions
        teacher_out = None if self.teacher is None else self.teacher(idx, batch)
        student_out = forward(self.student, self.task, batch, self.layout,
                              hidden=hidden, attentions=attentions)  # fmt: skip
        if teacher_out is None:
            teacher_out = Outputs(student_out.output.detach())
        labels = None if self.data.labels is None else self.data.labels[idx].to(self.device)
        return objective(student_out, teacher_out, batch, labels)

    def _save(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        position: _Position,
        started: float,
    ) -> None:
        if self.checkpointing is None:
            return
        state = {
            "fingerprint": self.fingerprint,
            **training_state(self.device, self.student, self.objective, optimizer, schedule),
            "epoch": position.epoch,
            "batches_done": position.batches_done,
            "generator_state": position.generator_state,
            "step": position.step,
            "seconds": position.seconds + time.perf_counter() - started,
            "history": list(self.history),
        }
        save_checkpoint(self.checkpointing.path, state)

    def _resume(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        position: _Position,
    ) -> bool:
        if self.checkpointing is None:
            return False
        state = load_checkpoint(self.checkpointing.path, self.fingerprint)
        if state is None:
            return False
        restore_training_state(
            state, self.device, self.student, self.objective, optimizer, schedule
        )
        position.epoch, position.batches_done = int(state["epoch"]), int(state["batches_done"])
        position.generator_state = state["generator_state"]
        position.step, position.seconds = int(state["step"]), float(state["seconds"])
        self.history[:] = [(str(n), int(s), int(e), float(v)) for n, s, e, v in state["history"]]
        self._announce_resume(position)
        return True

    def _announce_resume(self, position: _Position) -> None:
        run = "the baseline" if self.prefix else "training"
        if position.epoch > self.training.epochs:
            message = f"Resumed {run} from its checkpoint: all {position.step} steps were done."
        else:
            message = (
                f"Resumed {run} from a checkpoint at epoch {position.epoch}, step {position.step}."
            )
        data = {"epoch": position.epoch, "step": position.step, "baseline": bool(self.prefix)}
        self.reporter.event("resumed", message, data)
