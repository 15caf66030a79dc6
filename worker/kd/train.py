"""The training loop: seeded, AdamW with a cosine schedule, nanoGPT's step order."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from worker.kd.checkpoint import Checkpointing, load_checkpoint, save_checkpoint
from worker.kd.data import Splits
from worker.kd.errors import Cancelled, InvalidSpec
from worker.kd.evaluate import ValidationSet, accuracy, agreement, predict_logits
from worker.kd.losses import LossParts
from worker.kd.reporting import Reporter
from worker.kd.spec import TrainingSpec

GRAD_CLIP = 1.0
LOG_EVERY = 10


@dataclass
class TrainOutcome:
    epochs: int
    steps: int
    seconds: float
    used_labels: bool


@dataclass
class EpochTotals:
    """Sums of the loss parts over an epoch, kept as tensors to avoid a sync per step."""

    total: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    kd: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    ce: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    steps: int = 0

    def state(self) -> list[float]:
        return [self.total.item(), self.kd.item(), self.ce.item(), float(self.steps)]

    @classmethod
    def from_state(cls, values: list[float]) -> EpochTotals:
        total, kd, ce, steps = values
        return cls(torch.tensor(total), torch.tensor(kd), torch.tensor(ce), int(steps))

    def add(self, parts: LossParts) -> None:
        # Zero-dim CPU starts combine with device tensors; no host sync per step.
        self.total = self.total + parts.total.detach()
        self.kd = self.kd + parts.kd.detach()
        if parts.ce is not None:
            self.ce = self.ce + parts.ce.detach()
        self.steps += 1


@dataclass
class _LoopState:
    """Where the loop is: the epoch, how many of its batches are done, the running sums,
    and the shuffling generator as it was when the epoch drew its order."""

    generator: torch.Generator
    epoch: int = 1
    batches_done: int = 0
    epoch_generator_state: torch.Tensor | None = None
    totals: EpochTotals = field(default_factory=EpochTotals)
    window: EpochTotals = field(default_factory=EpochTotals)

    def begin_epoch(self, epoch: int, resumed: bool) -> None:
        self.epoch = epoch
        if resumed and self.epoch_generator_state is not None:
            self.generator.set_state(self.epoch_generator_state)
        else:
            self.batches_done = 0
            self.totals = EpochTotals()
        self.epoch_generator_state = self.generator.get_state()

    def end_epoch(self) -> None:
        self.epoch += 1
        self.batches_done = 0
        self.totals = EpochTotals()
        self.epoch_generator_state = self.generator.get_state()

    def state(self) -> dict[str, object]:
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "epoch_generator_state": self.epoch_generator_state
            if self.epoch_generator_state is not None
            else self.generator.get_state(),
            "totals": self.totals.state(),
            "window": self.window.state(),
        }

    def restore(self, state: dict[str, object]) -> None:
        self.epoch = int(state["epoch"])  # type: ignore[call-overload]
        self.batches_done = int(state["batches_done"])  # type: ignore[call-overload]
        generator_state = state["epoch_generator_state"]
        assert isinstance(generator_state, torch.Tensor)
        self.epoch_generator_state = generator_state
        self.totals = EpochTotals.from_state(state["totals"])  # type: ignore[arg-type]
        self.window = EpochTotals.from_state(state["window"])  # type: ignore[arg-type]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch of index batches; a last batch of one joins the one before, since
    BatchNorm cannot train on a single sample."""
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def steps_per_epoch(n: int, batch_size: int) -> int:
    steps = math.ceil(n / batch_size)
    return steps - 1 if steps > 1 and n % batch_size == 1 else steps


@dataclass
class Trainer:
    """Trains `student` to match `teacher` on `data`; the validation targets are fixed."""

    student: nn.Module
    teacher: nn.Module
    loss_fn: nn.Module
    data: Splits
    val: ValidationSet
    training: TrainingSpec
    device: torch.device
    reporter: Reporter
    history: list[tuple[str, int, int, float]] = field(default_factory=list)
    checkpointing: Checkpointing | None = None
    fingerprint: str = ""
    step: int = 0

    @property
    def total_steps(self) -> int:
        return self.training.epochs * steps_per_epoch(
            len(self.data.x_train), self.training.batch_size
        )

    def fit(self) -> TrainOutcome:
        start = time.perf_counter()
        optimizer = torch.optim.AdamW(
            self.student.parameters(),
            lr=self.training.learning_rate,
            weight_decay=self.training.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.total_steps)
        loop = _LoopState(torch.Generator().manual_seed(self.training.seed))
        resumed = self._resume(optimizer, scheduler, loop)
        self.teacher.eval()
        for epoch in range(loop.epoch, self.training.epochs + 1):
            loop.begin_epoch(epoch, resumed)
            resumed = False
            self._epoch(optimizer, scheduler, loop)
            self._end_epoch(epoch, loop.totals, float(scheduler.get_last_lr()[0]))
            loop.end_epoch()
            self._save(optimizer, scheduler, loop)
        seconds = time.perf_counter() - start
        return TrainOutcome(self.training.epochs, self.step, seconds, self.data.y_train is not None)

    def _epoch(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loop: _LoopState,
    ) -> None:
        self.student.train()
        batches = batch_indices(len(self.data.x_train), self.training.batch_size, loop.generator)
        for idx in batches[loop.batches_done :]:
            if self.reporter.should_stop():
                self._save(optimizer, scheduler, loop)
                raise Cancelled()
            parts = self._loss(idx)
            parts.total.backward()
            nn.utils.clip_grad_norm_(self.student.parameters(), GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            self.step += 1
            loop.batches_done += 1
            loop.totals.add(parts)
            loop.window.add(parts)
            if self.step % LOG_EVERY == 0:
                self._log_window(loop.epoch, loop.window)
                loop.window = EpochTotals()
            every = self.checkpointing.every_steps if self.checkpointing else 0
            if every and self.step % every == 0:
                self._save(optimizer, scheduler, loop)

    def _save(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loop: _LoopState,
    ) -> None:
        if self.checkpointing is None:
            return
        state = {
            "fingerprint": self.fingerprint,
            "student": self.student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
            "history": list(self.history),
            **loop.state(),
        }
        save_checkpoint(self.checkpointing.path, state)

    def _resume(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loop: _LoopState,
    ) -> bool:
        if self.checkpointing is None:
            return False
        state = load_checkpoint(self.checkpointing.path, self.fingerprint)
        if state is None:
            return False
        self.student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history[:] = [tuple(row) for row in state["history"]]
        loop.restore(state)
        self.reporter.event(
            "resumed",
            f"Resumed from a checkpoint at epoch {loop.epoch}, step {self.step}.",
            {"epoch": loop.epoch, "step": self.step},
        )
        return True

    def _loss(self, idx: torch.Tensor) -> LossParts:
        x = self.data.x_train[idx].to(self.device)  # (B, *input_shape)
        y = None if self.data.y_train is None else self.data.y_train[idx].to(self.device)  # (B,)
        with torch.no_grad():
            teacher_logits = self.teacher(x).float()  # (B, K)
        student_logits = self.student(x)  # (B, K)
        parts: LossParts = self.loss_fn(student_logits, teacher_logits, y)
        return parts

    def _log_window(self, epoch: int, window: EpochTotals) -> None:
        loss = self._checked_mean(window.total, window.steps)
        self.reporter.metric("train_loss", loss, step=self.step, epoch=epoch)
        self.reporter.progress(self.step / self.total_steps, epoch=epoch, step=self.step)

    def _checked_mean(self, total: torch.Tensor, steps: int) -> float:
        mean = total.item() / max(steps, 1)
        if not math.isfinite(mean):
            raise InvalidSpec(
                f"Training diverged by step {self.step} (the loss is {mean}). Lower "
                f"training.learning_rate (now {self.training.learning_rate:g}) or the temperature."
            )
        return mean

    def _end_epoch(self, epoch: int, totals: EpochTotals, lr: float) -> None:
        loss = self._checked_mean(totals.total, totals.steps)
        student_logits = predict_logits(self.student, self.val.x, self.device)  # (M, K)
        values = {
            "train_loss_epoch": loss,
            "train_kd_epoch": totals.kd.item() / totals.steps,
            "val_accuracy": accuracy(student_logits, self.val.labels),
            "val_agreement": agreement(student_logits, self.val.teacher_logits),
            "lr": lr,
        }
        if self.data.y_train is not None:
            values["train_ce_epoch"] = totals.ce.item() / totals.steps
        for name, value in values.items():
            self.reporter.metric(name, value, step=self.step, epoch=epoch)
        self.reporter.progress(self.step / self.total_steps, epoch=epoch, step=self.step)
        self.reporter.event(
            "epoch_end",
            f"Epoch {epoch}/{self.training.epochs}: loss {loss:.4g}, "
            f"val accuracy {values['val_accuracy']:.4f}",
            {"epoch": epoch, "step": self.step, **values},
        )
