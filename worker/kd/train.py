"""The training loop: seeded, AdamW with a cosine schedule, nanoGPT's step order."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

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

    def add(self, parts: LossParts) -> None:
        # Zero-dim CPU starts combine with device tensors; no host sync per step.
        self.total = self.total + parts.total.detach()
        self.kd = self.kd + parts.kd.detach()
        if parts.ce is not None:
            self.ce = self.ce + parts.ce.detach()
        self.steps += 1


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
        generator = torch.Generator().manual_seed(self.training.seed)
        self.teacher.eval()
        for epoch in range(1, self.training.epochs + 1):
            totals = self._epoch(epoch, optimizer, scheduler, generator)
            self._end_epoch(epoch, totals, float(scheduler.get_last_lr()[0]))
        seconds = time.perf_counter() - start
        return TrainOutcome(self.training.epochs, self.step, seconds, self.data.y_train is not None)

    def _epoch(
        self,
        epoch: int,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        generator: torch.Generator,
    ) -> EpochTotals:
        self.student.train()
        totals, window = EpochTotals(), EpochTotals()
        for idx in batch_indices(len(self.data.x_train), self.training.batch_size, generator):
            if self.reporter.should_stop():
                raise Cancelled()
            parts = self._loss(idx)
            parts.total.backward()
            nn.utils.clip_grad_norm_(self.student.parameters(), GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            self.step += 1
            totals.add(parts)
            window.add(parts)
            if self.step % LOG_EVERY == 0:
                self._log_window(epoch, window)
                window = EpochTotals()
        return totals

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
