"""The training loop, one for every task: seeded, AdamW with a schedule, nanoGPT's step
order (forward, backward, clip, step, zero_grad), autocast, early stopping, checkpoints.

What differs between tasks lives in a `TaskAdapter` (worker.kd.tasks): which examples
there are, the loss on a batch of them (the student's forward, the teacher's outputs and
the objective), and the validation figures. Everything else is here, once: the schedule,
clipping, precision, early stopping on validation quality, progress and metrics, and a
checkpoint that resumes exactly (the shuffling generator's state from the start of the
epoch and the batches done, the global RNG, and the adapter's own random state).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from worker.kd.errors import Cancelled, InvalidSpec
from worker.kd.spec import PlannedTraining
from worker.kd.training.checkpoint import (
    Checkpointing,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from worker.kd.training.distributed import WHOLE, Ranks
from worker.kd.training.reporting import Reporter

LOG_EVERY = 10  # steps between train_loss metrics

Cast = Callable[[], AbstractContextManager[object]]  # autocast for the student's forward


class TaskAdapter(Protocol):
    """How one task kind is trained: its examples, the loss on a batch of them, and its
    validation. `loss` runs the student's forward (and the objective) inside `cast()`."""

    @property
    def num_examples(self) -> int: ...

    def loss(
        self, idx: torch.Tensor, cast: Cast, part: slice = WHOLE
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total, {part: value}) on training examples `idx[part]` of the batch `idx` (B,):
        in a data parallel job each process trains on its part, and draws that span the
        batch (augmentation, mixup partners) are made for the whole batch, as in one
        process."""
        ...

    def evaluate(self) -> dict[str, float]:
        """The validation figures of the student now; `val_accuracy` (higher is better)
        is the one early stopping watches."""
        ...

    def rng_state(self) -> torch.Tensor:
        """The adapter's own random state (augmentation draws), for checkpoints."""
        ...

    def set_rng_state(self, state: torch.Tensor) -> None: ...


@dataclass
class TrainOutcome:
    epochs: int  # epochs actually run
    steps: int
    seconds: float
    used_labels: bool = False
    best_epoch: int | None = None
    stopped_early: bool = False


@dataclass
class RunningSums:
    """Sums of the loss parts over a span of steps, kept on the device (no sync per step),
    as one vector: one add per step however many parts the loss has."""

    names: tuple[str, ...] = ()
    sums: torch.Tensor | None = None  # (len(names),)
    steps: int = 0

    def add(self, names: tuple[str, ...], values: torch.Tensor) -> None:
        """`values` (len(names),): the step's detached loss parts, from `stack_parts`."""
        if self.sums is None:
            self.names, self.sums = names, values
        else:
            self.sums = self.sums.to(values.device) + values
        self.steps += 1

    def means(self) -> dict[str, float]:
        if self.sums is None:
            return {}
        steps, values = max(self.steps, 1), self.sums.tolist()
        return {name: value / steps for name, value in zip(self.names, values, strict=True)}

    def state(self) -> dict[str, object]:
        sums = {} if self.sums is None else dict(zip(self.names, self.sums.tolist(), strict=True))
        return {"sums": sums, "steps": self.steps}

    @classmethod
    def from_state(cls, state: dict[str, object]) -> RunningSums:
        sums = state["sums"]
        assert isinstance(sums, dict)
        values = torch.tensor([float(v) for v in sums.values()]) if sums else None
        return cls(tuple(sums), values, int(state["steps"]))  # type: ignore[call-overload]


def stack_parts(
    total: torch.Tensor, parts: dict[str, torch.Tensor]
) -> tuple[tuple[str, ...], torch.Tensor]:
    """("total", *part names) and their values as one detached float vector."""
    return ("total", *parts), torch.stack([total, *parts.values()]).detach().float()


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


def lr_multiplier(training: PlannedTraining, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at a step, for the schedule the spec names."""
    warmup = int(training.warmup_fraction * total_steps) if training.schedule != "cosine" else 0

    def factor(step: int) -> float:
        if training.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer, training: PlannedTraining, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if training.schedule == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=training.learning_rate,
            total_steps=max(total_steps, 1),
            pct_start=max(training.warmup_fraction, 0.01),
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(training, total_steps))


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA for `auto`, wherever asked for `bf16`; fp32 otherwise."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class _LoopState:
    """Where the loop is: the epoch, how many of its batches are done, the running sums,
    and the shuffling generator as it was when the epoch drew its order."""

    generator: torch.Generator
    epoch: int = 1
    batches_done: int = 0
    epoch_generator_state: torch.Tensor | None = None
    totals: RunningSums = field(default_factory=RunningSums)
    window: RunningSums = field(default_factory=RunningSums)
    best_accuracy: float = -1.0
    best_epoch: int | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    stale_epochs: int = 0

    def begin_epoch(self, epoch: int, resumed: bool) -> None:
        self.epoch = epoch
        if resumed and self.epoch_generator_state is not None:
            self.generator.set_state(self.epoch_generator_state)
        else:
            self.batches_done = 0
            self.totals = RunningSums()
        self.epoch_generator_state = self.generator.get_state()

    def end_epoch(self) -> None:
        self.epoch += 1
        self.batches_done = 0
        self.totals = RunningSums()
        self.epoch_generator_state = self.generator.get_state()

    def state(self) -> dict[str, object]:
        generator_state = self.epoch_generator_state
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "epoch_generator_state": generator_state
            if generator_state is not None
            else self.generator.get_state(),
            "totals": self.totals.state(),
            "window": self.window.state(),
            "best_accuracy": self.best_accuracy,
            "best_epoch": -1 if self.best_epoch is None else self.best_epoch,
            "best_weights": self.best_weights or {},
            "stale_epochs": self.stale_epochs,
        }

    def restore(self, state: dict[str, object]) -> None:
        self.epoch = int(state["epoch"])  # type: ignore[call-overload]
        self.batches_done = int(state["batches_done"])  # type: ignore[call-overload]
        generator_state = state["epoch_generator_state"]
        assert isinstance(generator_state, torch.Tensor)
        self.epoch_generator_state = generator_state
        self.totals = RunningSums.from_state(state["totals"])  # type: ignore[arg-type]
        self.window = RunningSums.from_state(state["window"])  # type: ignore[arg-type]
        self.best_accuracy = float(state["best_accuracy"])  # type: ignore[arg-type]
        best_epoch = int(state["best_epoch"])  # type: ignore[call-overload]
        self.best_epoch = None if best_epoch < 0 else best_epoch
        self.best_weights = state["best_weights"] or None  # type: ignore[assignment]
        self.stale_epochs = int(state["stale_epochs"])  # type: ignore[call-overload]


def adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused where torch has the kernel for these parameters (floating point, all on
    one CPU or CUDA device): one kernel per step instead of a dozen small ops per tensor.
    For a small student that matters: 29 against 85 us per step for a 3k-parameter MLP on
    one CPU thread (BENCHMARKS.md, section 1)."""
    params = list(params)
    devices = {p.device for p in params}
    fused = (
        len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(p.is_floating_point() for p in params)
    )
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


@dataclass
class Trainer:
    """Trains `student` through `adapter` against `objective` (the loss module, whose own
    parameters, such as feature adapters, train with the student)."""

    student: nn.Module
    objective: nn.Module
    adapter: TaskAdapter
    training: PlannedTraining
    device: torch.device
    reporter: Reporter
    history: list[tuple[str, int, int, float]] = field(default_factory=list)
    checkpointing: Checkpointing | None = None
    fingerprint: str = ""
    metric_prefix: str = ""
    progress_span: tuple[float, float] = (0.0, 1.0)  # (offset, share) of the job's progress
    used_labels: bool = False
    ranks: Ranks = field(default_factory=Ranks.current)  # data parallel: this process's place
    step: int = 0
    _seconds_before: float = 0.0  # training time of earlier runs of this job

    @property
    def total_steps(self) -> int:
        return self.training.epochs * steps_per_epoch(
            self.adapter.num_examples, self.training.batch_size
        )

    def parameters(self) -> list[nn.Parameter]:
        params = [*self.student.parameters(), *self.objective.parameters()]
        return [p for p in params if p.requires_grad]

    def cast(self) -> AbstractContextManager[object]:
        return autocast(self.device, self.training.precision)

    def fit(self) -> TrainOutcome:
        """Train to the last epoch (or until early stopping), first resuming from the
        checkpoint if it holds this recipe's run; on a stop request, save and raise
        `Cancelled`."""
        start = time.perf_counter()
        training = self.training
        optimizer = adamw(self.parameters(), training.learning_rate, training.weight_decay)
        scheduler = make_scheduler(optimizer, self.training, self.total_steps)
        loop = _LoopState(torch.Generator().manual_seed(self.training.seed))
        resumed = self._resume(optimizer, scheduler, loop)
        self.ranks.broadcast_parameters(self.student)  # as DDP does: the leader's weights
        self.ranks.broadcast_parameters(self.objective)
        stopped_early = False
        for epoch in range(loop.epoch, self.training.epochs + 1):
            loop.begin_epoch(epoch, resumed)
            resumed = False
            self._epoch(optimizer, scheduler, loop, start)
            val_accuracy = self._end_epoch(epoch, loop.totals, float(scheduler.get_last_lr()[0]))
            self._track_best(loop, epoch, val_accuracy)
            loop.end_epoch()
            self._save(optimizer, scheduler, loop, start)
            patience = self.training.early_stopping_patience
            if patience is not None and loop.stale_epochs >= patience:
                stopped_early = True
                self.reporter.event(
                    f"{self.metric_prefix}early_stop",
                    f"No better validation accuracy for {patience} epochs; stopping after "
                    f"epoch {epoch} and keeping epoch {loop.best_epoch}'s weights.",
                    {"epoch": epoch, "best_epoch": loop.best_epoch},
                )
                break
        if self.training.early_stopping_patience is not None and loop.best_weights:
            self.student.load_state_dict(loop.best_weights)
        return TrainOutcome(
            epochs=loop.epoch - 1,
            steps=self.step,
            seconds=self._seconds_before + time.perf_counter() - start,
            used_labels=self.used_labels,
            best_epoch=loop.best_epoch,
            stopped_early=stopped_early,
        )

    def _track_best(self, loop: _LoopState, epoch: int, val_accuracy: float) -> None:
        if val_accuracy > loop.best_accuracy:
            loop.best_accuracy, loop.best_epoch, loop.stale_epochs = val_accuracy, epoch, 0
            if self.training.early_stopping_patience is not None:
                loop.best_weights = copy.deepcopy(
                    {k: v.detach().cpu() for k, v in self.student.state_dict().items()}
                )
        else:
            loop.stale_epochs += 1

    def _epoch(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loop: _LoopState,
        start: float,
    ) -> None:
        self.student.train()
        batches = batch_indices(self.adapter.num_examples, self.training.batch_size, loop.generator)
        clip = self.training.grad_clip
        parameters = self.parameters()  # once per epoch, not per step
        every = self.checkpointing.every_steps if self.checkpointing else 0
        total_steps, loss, cast = self.total_steps, self.adapter.loss, self.cast
        ranks = self.ranks
        for idx in batches[loop.batches_done :]:
            if ranks.agree(self.reporter.should_stop(), self.device):
                self._save(optimizer, scheduler, loop, start)
                raise Cancelled()
            part, weight = ranks.share(len(idx))  # the whole batch in one process
            total, parts = loss(idx, cast, part)
            (total * weight if ranks.distributed else total).backward()
            ranks.average_gradients(parameters)
            if clip is not None:
                nn.utils.clip_grad_norm_(parameters, clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            self.step += 1
            loop.batches_done += 1
            names, values = stack_parts(total, parts)
            values = ranks.batch_mean(values, weight / ranks.world)  # the global batch's
            loop.totals.add(names, values)
            loop.window.add(names, values)
            if self.step % LOG_EVERY == 0 or self.step == total_steps:
                self._log_window(loop.epoch, loop.window)
                loop.window = RunningSums()
            if every and self.step % every == 0:
                self._save(optimizer, scheduler, loop, start)

    def _save(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loop: _LoopState,
        start: float,
    ) -> None:
        if self.checkpointing is None:
            return
        if not self.ranks.leader:  # the leader's copy of the weights is everyone's
            return
        state = {
            "fingerprint": self.fingerprint,
            **training_state(self.device, self.student, self.objective, optimizer, scheduler),
            "step": self.step,
            "seconds": self._seconds_before + time.perf_counter() - start,
            "adapter_rng": self.adapter.rng_state(),
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
        restore_training_state(
            state, self.device, self.student, self.objective, optimizer, scheduler
        )
        self.adapter.set_rng_state(state["adapter_rng"])
        self.step = int(state["step"])
        self._seconds_before = float(state["seconds"])
        self.history[:] = [(str(n), int(s), int(e), float(v)) for n, s, e, v in state["history"]]
        loop.restore(state)
        self._announce_resume(loop.epoch)
        return True

    def _announce_resume(self, epoch: int) -> None:
        run = "the baseline" if self.metric_prefix else "training"
        if epoch > self.training.epochs:
            message = f"Resumed {run} from its checkpoint: all {self.step} steps were done."
        else:
            message = f"Resumed {run} from a checkpoint at epoch {epoch}, step {self.step}."
        data = {"epoch": epoch, "step": self.step, "baseline": bool(self.metric_prefix)}
        self.reporter.event("resumed", message, data)

    def _progress(self, epoch: int) -> None:
        offset, share = self.progress_span
        fraction = offset + share * self.step / max(self.total_steps, 1)
        self.reporter.progress(fraction, epoch=epoch, step=self.step)

    def _log_window(self, epoch: int, window: RunningSums) -> None:
        means = window.means()
        loss = self._checked(means.pop("total", math.nan))
        prefix = self.metric_prefix
        self.reporter.metric(f"{prefix}train_loss", loss, step=self.step, epoch=epoch)
        for name, value in means.items():
            self.reporter.metric(f"{prefix}loss_{name}", value, step=self.step, epoch=epoch)
        self._progress(epoch)

    def _checked(self, mean: float) -> float:
        if not math.isfinite(mean):
            raise InvalidSpec(
                f"Training diverged by step {self.step} (the loss is {mean}). Lower "
                f"training.learning_rate (now {self.training.learning_rate:g}) or the temperature."
            )
        return mean

    def _end_epoch(self, epoch: int, totals: RunningSums, lr: float) -> float:
        means = totals.means()
        loss = self._checked(means.pop("total", math.nan))
        self.student.eval()
        evaluated = self.adapter.evaluate() if self.ranks.leader else None
        values = {
            "train_loss_epoch": loss,
            **{f"train_{name}_epoch": value for name, value in means.items()},
            **self.ranks.broadcast(evaluated),  # the leader's: early stopping agrees
            "lr": lr,
        }
        prefix = self.metric_prefix
        for name, value in values.items():
            self.reporter.metric(f"{prefix}{name}", value, step=self.step, epoch=epoch)
        self._progress(epoch)
        label = "Baseline epoch" if prefix else "Epoch"
        self.reporter.event(
            f"{prefix}epoch_end",
            f"{label} {epoch}/{self.training.epochs}: loss {loss:.4g}, "
            f"val accuracy {values['val_accuracy']:.4f}",
            {"epoch": epoch, "step": self.step, **values},
        )
        return values["val_accuracy"]
