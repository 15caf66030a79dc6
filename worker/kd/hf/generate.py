"""Generation for the causal-LM methods that learn from generated text (`sequence`,
`on_policy`) and for the report's speculative-decoding and tokens/s figures: the prompt of a
text, seeded sampling, and batches of (prompt, completion) with a mask of the completion
tokens the loss reads.

A text's prompt is its row's own (prompt/completion rows and chats: `prompt_split`); a
plain text's is its first half of tokens (at least one token; `split_prompt`) and the rest
is the data's completion. Everything below takes (prompt ids, optional completion ids)
pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from worker.kd.hf.data import Encoded
from worker.kd.spec import GenerationSpec

PROMPT_SHARE = 0.5  # of a plain text's tokens


def split_prompt(ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """(prompt, completion) of a text's token ids: the first half (at least one token) and
    the rest."""
    cut = max(1, int(len(ids) * PROMPT_SHARE))
    return list(ids[:cut]), list(ids[cut:])


def prompt_split(data: Encoded, index: int) -> tuple[list[int], list[int]]:
    """(prompt, completion) token ids of one text: the row's own prompt where it has one
    (prompt/completion rows, chats), else `split_prompt`."""
    ids = data.features[index]["input_ids"]
    cut = data.prompt_lengths[index] if data.prompt_lengths else 0
    return (list(ids[:cut]), list(ids[cut:])) if cut else split_prompt(ids)


@dataclass
class LMBatch:
    """Prompts and completions side by side, right-padded: the model's batch and the
    completion tokens, the ones a loss reads."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask: each (B, T)
    completion: torch.Tensor  # (B, T) bool: a completion token (predicted from the one before)

    def rows(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits (B, T, V) that predict a completion token: (N, V)."""
        return logits[:, :-1][self.completion[:, 1:]]

    def targets(self) -> torch.Tensor:
        """The completion tokens those rows predict: (N,)."""
        return self.inputs["input_ids"][:, 1:][self.completion[:, 1:]]

    @property
    def tokens(self) -> int:
        return int(self.completion[:, 1:].sum())


def pack(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
) -> LMBatch:
    """Each prompt followed by its completion, right-padded with `pad_id`."""
    length = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)  # (B, T)
    completion = torch.zeros(len(prompts), length, dtype=torch.bool)  # (B, T)
    for row, (prompt, done) in enumerate(zip(prompts, completions, strict=True)):
        n, m = len(prompt), len(done)
        ids[row, : n + m] = torch.tensor([*prompt, *done], dtype=torch.long)
        mask[row, : n + m] = 1
        completion[row, n : n + m] = True
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    return LMBatch(inputs, completion.to(device))


def max_positions(model: nn.Module) -> int | None:
    config = cast(Any, model).config
    for name in ("n_positions", "max_position_embeddings", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def new_tokens(model: nn.Module, prompt_length: int, wanted: int) -> int:
    """`wanted` new tokens, fewer where the model's positions run out (0: none fit)."""
    limit = max_positions(model)
    return wanted if limit is None else max(0, min(wanted, limit - prompt_length))


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask (B, P), padded on the left for generation."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros(len(prompts), longest, dtype=torch.long)  # (B, P)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, longest - len(prompt) :] = 1
    return ids, mask


def sample(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    generation: GenerationSpec,
    pad_id: int,
    eos_id: int | None,
    seed: int,
    count: int = 1,
) -> list[list[int]]:
    """`count` completions of each prompt (prompt-major: prompt 0's first, ...), sampled as
    `generation` says (temperature 0: greedy), in eval mode, drawn from a random state
    seeded with `seed` alone: the same call gives the same completions, and the caller's
    random state is untouched. A completion ends after its first end-of-text token."""
    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    budget = new_tokens(model, longest, generation.max_new_tokens)
    if budget == 0:
        return [[] for _ in range(len(prompts) * count)]
    ids, mask = left_padded(prompts, pad_id)  # each (B, P)
    greedy = generation.temperature == 0.0
    options: dict[str, Any] = {"do_sample": False} if greedy else {
        "do_sample": True, "temperature": generation.temperature, "top_p": generation.top_p,
        "top_k": 0,  # no top-k cut (transformers defaults to 50): top_p alone
    }  # fmt: skip
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            out = cast(Any, model).generate(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                max_new_tokens=budget, num_return_sequences=count, pad_token_id=pad_id,
                eos_token_id=eos_id, **options,
            )  # fmt: skip  # (B * count, P + new)
    finally:
        model.train(was_training)
    return [_until_end(row, eos_id) for row in out[:, longest:].tolist()]


def _until_end(tokens: list[int], eos_id: int | None) -> list[int]:
    if eos_id is not None and eos_id in tokens:
        return tokens[: tokens.index(eos_id) + 1]
    return tokens
