"""What the report measures on the worker: task quality on the validation texts, the
embedding agreement between student and teacher, and latency at batch 1 and 32."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worker.kd.hf.data import Encoded, target_mask
from worker.kd.hf.layout import ModelLayout
from worker.kd.hf.models import forward
from worker.kd.training.evaluate import paired_times_ms

EVAL_BATCH = 32
SPEED_BATCHES = (1, 32)
# One thread: with torch's default (one per core) a single preempted thread stalls a whole
# forward pass, and on a busy shared CPU the speed-up swung 0.2-60x from run to run.
TIMING_THREADS = 1
TIMING_BUDGET_S = 1.0  # per batch size, after the warm-up; 0.4-0.7 s in all on test models
WARMUP_ROUNDS, MIN_ROUNDS, MAX_ROUNDS = 1, 5, 100
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
                mask = target_mask(batch)  # (B, T): completions only, where rows have prompts
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


def perplexity(mine: ValOutputs) -> float:
    """exp of the mean next-token cross-entropy over the scored tokens (a causal LM's
    `predict` outputs: completions only where texts have prompts)."""
    logits, targets = torch.cat(mine.outputs), torch.cat(mine.targets)  # (N, V), (N,)
    return float(torch.exp(F.cross_entropy(logits.float(), targets)))


SAMPLE_PROMPTS = 5
SAMPLE_NEW_TOKENS = 16
SAMPLE_PROMPT_TOKENS = 8  # a text without a prompt: its first tokens (at most half) prompt


def sample_prompts(data: Encoded, tokenizer: Any, count: int = SAMPLE_PROMPTS) -> list[str]:
    """Up to `count` prompts from the texts: a row's own prompt, else a text's first
    tokens (at most half of them, at most SAMPLE_PROMPT_TOKENS)."""
    prompts = []
    for example, features in zip(data.examples[:count], data.features[:count], strict=False):
        if example.prompt is not None and example.completion is not None:
            prompts.append(example.prompt)
            continue
        ids = features["input_ids"]
        keep = max(1, min(SAMPLE_PROMPT_TOKENS, len(ids) // 2))
        prompts.append(tokenizer.decode(ids[:keep]))
    return prompts


def greedy_completions(
    model: Any, tokenizer: Any, prompts: list[str], device: torch.device,
    max_new_tokens: int = SAMPLE_NEW_TOKENS,
) -> list[str]:  # fmt: skip
    """Each prompt's greedy continuation (the new text only), one prompt at a time (no
    padding to get wrong)."""
    model.eval()
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    completions = []
    with torch.no_grad():
        for prompt in prompts:
            encoded = tokenizer(prompt, return_tensors="pt").to(device)
            out = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=end
            )  # (1, T + new)
            new = out[0, encoded["input_ids"].shape[1] :]
            completions.append(tokenizer.decode(new, skip_special_tokens=True))
    return completions


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
) -> dict[str, dict[str, Any]]:
    """Teacher and student timed back to back, round by round, per batch size ("batch_1",
    "batch_32"), on TIMING_THREADS CPU threads (the caller's count is restored after):

    - "teacher", "student": median latency in ms;
    - "speedup": the median over rounds of teacher time / student time, so that a slow
      spell of a shared machine lands on both sides of one ratio rather than on one
      model's median. Ten runs on the 4- and 2-layer test BERTs spread 1.567-1.575x at
      batch 1 and 1.77-1.79x at batch 32; timed as before (each model's median of 15 and
      5 runs on torch's 2 threads) they spread 1.41-1.62x and 1.61-1.80x on a quiet
      2-core machine, 0.20-14.5x and 0.15-61x on a busy one;
    - "speedup_range": the middle half (25th and 75th percentiles) of those ratios;
    - "timing": the thread count, the time budget and the rounds timed per batch size."""
    generator = torch.Generator().manual_seed(0)
    timings: dict[str, dict[str, Any]] = {
        "teacher": {}, "student": {}, "speedup": {}, "speedup_range": {},
        "timing": {"threads": TIMING_THREADS, "budget_s": TIMING_BUDGET_S, "rounds": {}},
    }  # fmt: skip
    models: list[nn.Module] = [_Timed(teacher).eval(), _Timed(student).eval()]
    with torch_threads(TIMING_THREADS):
        for size in SPEED_BATCHES:
            ids = torch.randint(0, vocab, (size, length), generator=generator).to(device)
            t, s = paired_times_ms(
                models,
                ids,
                device,
                warmup=WARMUP_ROUNDS,
                min_rounds=MIN_ROUNDS,
                max_rounds=MAX_ROUNDS,
                budget_s=TIMING_BUDGET_S,
                alternate=True,
            )  # (rounds,) each
            ratios = [a / b for a, b in zip(t, s, strict=True)]
            low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
            key = f"batch_{size}"
            timings["teacher"][key] = statistics.median(t)
            timings["student"][key] = statistics.median(s)
            timings["speedup"][key] = statistics.median(ratios)
            timings["speedup_range"][key] = [low, high]
            timings["timing"]["rounds"][key] = len(ratios)
    return timings


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to `count` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
