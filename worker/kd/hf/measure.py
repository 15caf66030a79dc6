"""What the report measures on the worker: task quality on the validation texts, the
embedding agreement between student and teacher, and latency at batch 1 and 32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worker.kd.evaluate import paired_latency_ms
from worker.kd.hf.data import Encoded
from worker.kd.hf.layout import ModelLayout
from worker.kd.hf.models import forward

EVAL_BATCH = 32
SPEED_BATCHES = (1, 32)
QUALITY_METRICS = {
    "sequence_classification": "accuracy",
    "sentence_embedding": "nearest-neighbour retrieval agreement with the teacher",
    "causal_lm": "next-token top-1 accuracy",
}


@dataclass
class ValOutputs:
    outputs: list[torch.Tensor]  # per batch: (B, K) | (B, D) | (N, V) rows of real tokens
    targets: list[torch.Tensor]  # per batch: labels (B,) or next tokens (N,); empty if none


def predict(
    model: nn.Module, task: str, val: Encoded, tokenizer: Any, layout: ModelLayout | None,
    device: torch.device,
) -> ValOutputs:  # fmt: skip
    model.eval()
    result = ValOutputs([], [])
    with torch.no_grad():
        for start in range(0, len(val), EVAL_BATCH):
            idx = list(range(start, min(start + EVAL_BATCH, len(val))))
            batch = val.batch(idx, tokenizer, device)
            out = forward(model, task, batch, layout).output.float()
            if task == "causal_lm":
                mask = batch["attention_mask"].bool()
                result.outputs.append(out[:, :-1][mask[:, 1:]].cpu())
                result.targets.append(batch["input_ids"][:, 1:][mask[:, 1:]].cpu())
            else:
                result.outputs.append(out.cpu())
                if val.labels is not None:
                    result.targets.append(val.labels[idx])
    return result


def quality(task: str, mine: ValOutputs, teacher: ValOutputs) -> float:
    """The task's quality number for one model (the teacher scores itself 1.0 where the
    measure is agreement with the teacher)."""
    out = torch.cat(mine.outputs)
    if task == "sentence_embedding":
        return retrieval_agreement(out, torch.cat(teacher.outputs))
    targets = torch.cat(mine.targets) if mine.targets else torch.cat(teacher.outputs).argmax(-1)
    return float((out.argmax(dim=-1) == targets).float().mean())


def retrieval_agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Share of texts whose nearest neighbour (cosine, itself excluded) is the same text
    under the student's embeddings as under the teacher's."""
    if len(student) < 2:
        return 1.0
    return float((_nearest(student) == _nearest(teacher)).float().mean())


def _nearest(embeddings: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(embeddings.float(), dim=-1)  # (M, D)
    similarity = unit @ unit.T  # (M, M)
    similarity.fill_diagonal_(-2.0)
    return similarity.argmax(dim=1)  # (M,)


def mean_cosine(student: torch.Tensor, teacher: torch.Tensor) -> float:
    return float(F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean())


class TaskModule(nn.Module):
    """A model as one function of token ids (and mask): what is timed and exported."""

    def __init__(self, model: nn.Module, task: str, layout: ModelLayout | None) -> None:
        super().__init__()
        self.model, self.task, self.layout = model, task, layout

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        return forward(self.model, self.task, batch, self.layout).output


class _Timed(nn.Module):
    def __init__(self, module: TaskModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.module(input_ids, torch.ones_like(input_ids))


def speed(
    teacher: TaskModule, student: TaskModule, vocab: int, length: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Median latency (ms) of teacher and student, timed in turn, per batch size."""
    generator = torch.Generator().manual_seed(0)
    timings: dict[str, dict[str, float]] = {"teacher": {}, "student": {}}
    models: list[nn.Module] = [_Timed(teacher), _Timed(student)]
    for size in SPEED_BATCHES:
        ids = torch.randint(0, vocab, (size, length), generator=generator)  # (B, L)
        runs, warmup = (15, 3) if size == 1 else (5, 1)
        t, s = paired_latency_ms(models, ids, device, runs=runs, warmup=warmup)
        timings["teacher"][f"batch_{size}"] = t
        timings["student"][f"batch_{size}"] = s
    return timings
