"""Measurements on the validation set: accuracy, agreement, KL, size and latency."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from worker.kd.datasets.splits import Splits

# Large enough that validation sets of usual size run as one batch, as a user would run them.
EVAL_BATCH = 8192


@dataclass
class ValidationSet:
    """What every evaluation is measured against: fixed inputs, labels and teacher logits."""

    x: torch.Tensor  # (M, *input_shape)
    labels: torch.Tensor  # (M,) the dataset's labels, or the teacher's argmax without them
    label_source: Literal["dataset", "teacher"]
    teacher_logits: torch.Tensor  # (M, K)
    source: str  # the split: x_val, x_test, or split (carved)

    @classmethod
    def build(cls, data: Splits, teacher: nn.Module, device: torch.device) -> ValidationSet:
        """The selection split (`x_val`): best epoch, early stopping, a search's trials."""
        source = "x_val" if data.selection == "x_val" else "split"
        return cls._of(data.x_val, data.y_val, source, teacher, device)

    @classmethod
    def evaluation(cls, data: Splits, teacher: nn.Module, device: torch.device) -> ValidationSet:
        """The evaluation split (`x_eval`), used for no choice: the report's figures."""
        return cls._of(data.x_eval, data.y_eval, data.source, teacher, device)

    @classmethod
    def _of(
        cls,
        x: torch.Tensor,
        y: torch.Tensor | None,
        source: str,
        teacher: nn.Module,
        device: torch.device,
    ) -> ValidationSet:
        teacher_logits = predict_logits(teacher, x, device)  # (M, K)
        if y is not None:
            return cls(x, y, "dataset", teacher_logits, source)
        labels = teacher_logits.argmax(dim=1)  # (M,)
        return cls(x, labels, "teacher", teacher_logits, source)


def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits (N, K) as float32 on CPU, in eval mode, without autograd."""
    model.eval()
    with torch.no_grad():  # not inference_mode: TorchScript students train afterwards
        chunks = [model(x[i : i + EVAL_BATCH].to(device)) for i in range(0, len(x), EVAL_BATCH)]
    return torch.cat(chunks).float().cpu()  # (N, K)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of logits (N, K) against labels (N,)."""
    return (logits.argmax(dim=1) == labels).float().mean().item()


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of samples whose label is among the k highest logits (N, K)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (N, k)
    return (top == labels.unsqueeze(1)).any(dim=1).float().mean().item()


def agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Share of samples where student and teacher logits (N, K) pick the same class."""
    return accuracy(student, teacher.argmax(dim=1))


def kl_teacher_student(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean KL(softmax(teacher) || softmax(student)) per sample, at temperature 1."""
    log_p_student = F.log_softmax(student.double(), dim=1)  # (N, K)
    log_p_teacher = F.log_softmax(teacher.double(), dim=1)  # (N, K)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl.item()


def paired_latency_ms(
    models: list[nn.Module],
    example: torch.Tensor,
    device: torch.device,
    runs: int = 31,
    warmup: int = 5,
) -> list[float]:
    """Median wall time (ms) of one forward pass of each model on `example`, the models
    timed in turn within each round so that all of them meet the same machine load."""
    for model in models:
        model.eval()
    times = paired_times_ms(
        models, example.to(device), device, warmup=warmup, min_rounds=runs, max_rounds=runs
    )
    return [statistics.median(model_times) for model_times in times]


def paired_times_ms(
    models: list[nn.Module],
    example: torch.Tensor,
    device: torch.device,
    *,
    warmup: int,
    min_rounds: int,
    max_rounds: int,
    budget_s: float = math.inf,
    alternate: bool = False,
) -> list[list[float]]:
    """Per model, its wall time (ms) on `example` in each timed round: `warmup` untimed
    rounds, then rounds until `budget_s` has passed, `min_rounds` at least and
    `max_rounds` at most. The models run in turn within a round, so that all meet the same
    machine load; with `alternate`, odd rounds run them in reverse order, so that none
    always goes first."""
    times: list[list[float]] = [[] for _ in models]
    order = list(enumerate(models))
    deadline = math.inf
    with torch.no_grad():  # not inference_mode: TorchScript students train afterwards
        for round_ in range(-warmup, max_rounds):
            if round_ == 0:
                deadline = time.perf_counter() + budget_s
            elif round_ >= min_rounds and time.perf_counter() >= deadline:
                break
            for index, model in order[::-1] if alternate and round_ % 2 else order:
                _synchronize(device)
                start = time.perf_counter()
                model(example)
                _synchronize(device)
                if round_ >= 0:
                    times[index].append((time.perf_counter() - start) * 1000)
    return times


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
