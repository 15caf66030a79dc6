"""A causal-LM student as its teacher's draft model (speculative decoding through
transformers' assisted generation, `teacher.generate(..., assistant_model=student)`, which
runs at batch 1), and the generation speed of both models at batch 1 and 8.

Assisted greedy decoding returns the teacher's own greedy tokens whatever the draft
proposes; `identical` checks that it did on every prompt. `acceptance_rate` is accepted
draft tokens / drafted tokens, counted from transformers' own candidate generator: each
round of assisted decoding ends with `update_candidate_strategy(input_ids, scores,
num_matches)`, where `scores` holds the teacher's logits for the drafted tokens plus one
and `num_matches` is how many of them the teacher accepted. `speedup` is the teacher's wall
time alone over its time with the draft, same prompts, greedy, summed over the prompts
(one warm-up run of each first, on TIMING_THREADS CPU threads like every latency here).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn

from worker.kd.hf.generate import left_padded, new_tokens
from worker.kd.hf.measure import TIMING_THREADS, torch_threads

SPECULATIVE_PROMPTS = 8
MAX_NEW_TOKENS = 32  # per prompt, at most (the job's generation.max_new_tokens when lower)
GENERATION_BATCHES = (1, 8)
SPEED_ROUNDS = 3  # timed rounds per model and batch size, after one warm-up


def greedy(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    count: int,
    pad_id: int,
    eos_id: int | None,
    *,
    assistant: nn.Module | None = None,
    exact: bool = False,
) -> torch.Tensor:
    """Greedy generation of `count` new tokens at most (`exact`: exactly, end-of-text or
    not); the whole sequences (B, P + new)."""
    device = next(model.parameters()).device
    options: dict[str, Any] = {"min_new_tokens": count} if exact else {}
    if assistant is not None:
        options["assistant_model"] = assistant
    with torch.no_grad():
        out: torch.Tensor = cast(Any, model).generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
            max_new_tokens=count, pad_token_id=pad_id, eos_token_id=eos_id, **options,
        )  # fmt: skip
    return out


@contextlib.contextmanager
def counting_drafts(model: nn.Module) -> Iterator[dict[str, int]]:
    """Counts drafted and accepted tokens of `model`'s assisted generation in the block,
    from the candidate generator transformers builds for each `generate` call."""
    counts = {"drafted": 0, "accepted": 0, "rounds": 0}
    target = cast(Any, model)
    original = target._get_candidate_generator

    def counted_generator(*args: Any, **kwargs: Any) -> Any:
        generator = original(*args, **kwargs)
        update = generator.update_candidate_strategy

        def counted(input_ids: torch.Tensor, scores: torch.Tensor, num_matches: Any) -> Any:
            counts["drafted"] += int(scores.shape[1]) - 1  # (1, drafted + 1, V)
            counts["accepted"] += int(num_matches)
            counts["rounds"] += 1
            return update(input_ids, scores, num_matches)

        generator.update_candidate_strategy = counted
        return generator

    target._get_candidate_generator = counted_generator
    try:
        yield counts
    finally:
        del target._get_candidate_generator  # the class's method again


def speculative(
    teacher: nn.Module,
    student: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_id: int,
    eos_id: int | None,
) -> dict[str, Any]:
    """The student as the teacher's draft on `prompts`, one at a time (see the module)."""
    prompts = list(prompts)[:SPECULATIVE_PROMPTS]
    count = new_tokens(teacher, max(len(p) for p in prompts), min(max_new_tokens, MAX_NEW_TOKENS))
    teacher.eval()
    student.eval()
    plain_s = assisted_s = 0.0
    identical, tokens = True, 0
    with torch_threads(TIMING_THREADS), counting_drafts(teacher) as counts:
        warm = left_padded(prompts[:1], pad_id)
        greedy(teacher, *warm, count, pad_id, eos_id)
        greedy(teacher, *warm, count, pad_id, eos_id, assistant=student)
        counts.update(drafted=0, accepted=0, rounds=0)
        for prompt in prompts:
            ids, mask = left_padded([prompt], pad_id)
            start = time.perf_counter()
            plain = greedy(teacher, ids, mask, count, pad_id, eos_id)
            middle = time.perf_counter()
            assisted = greedy(teacher, ids, mask, count, pad_id, eos_id, assistant=student)
            plain_s += middle - start
            assisted_s += time.perf_counter() - middle
            identical = identical and torch.equal(plain.cpu(), assisted.cpu())
            tokens += plain.shape[1] - ids.shape[1]
    drafted, accepted = counts["drafted"], counts["accepted"]
    return {
        "acceptance_rate": accepted / drafted if drafted else None,
        "speedup": plain_s / assisted_s if assisted_s > 0 else None,
        "identical": identical,
        "drafted": drafted,
        "accepted": accepted,
        "rounds": counts["rounds"],
        "prompts": len(prompts),
        "max_new_tokens": count,
        "tokens": tokens,
        "teacher_seconds": round(plain_s, 4),
        "assisted_seconds": round(assisted_s, 4),
        "decoding": "greedy, batch 1",
        "acceptance_counted_by": "transformers candidate generator (update_candidate_strategy)",
        "threads": TIMING_THREADS,
    }


def generation_speed(
    teacher: nn.Module,
    student: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_id: int,
    eos_id: int | None,
) -> dict[str, Any]:
    """Greedy generation tokens/s of teacher and student at batch 1 and 8 (new tokens per
    second over the batch, exactly `max_new_tokens` each, median of SPEED_ROUNDS rounds with
    the two models interleaved)."""
    prompts = list(prompts)
    count = new_tokens(teacher, max(len(p) for p in prompts), min(max_new_tokens, MAX_NEW_TOKENS))
    speed: dict[str, Any] = {"teacher": {}, "student": {}, "new_tokens": count,
                             "threads": TIMING_THREADS}  # fmt: skip
    models = {"teacher": teacher.eval(), "student": student.eval()}
    with torch_threads(TIMING_THREADS):
        for size in GENERATION_BATCHES:
            chosen = [prompts[i % len(prompts)] for i in range(size)]
            ids, mask = left_padded(chosen, pad_id)
            times: dict[str, list[float]] = {"teacher": [], "student": []}
            for round_ in range(SPEED_ROUNDS + 1):
                for name, model in models.items():
                    start = time.perf_counter()
                    greedy(model, ids, mask, count, pad_id, eos_id, exact=True)
                    if round_:  # the first round warms up
                        times[name].append(time.perf_counter() - start)
            for name in models:
                speed[name][f"batch_{size}"] = size * count / statistics.median(times[name])
    return speed
