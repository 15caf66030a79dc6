"""Consistent teaching for texts (Beyer et al. 2022, carried over from images): each
training batch has a share of its real tokens replaced by random vocabulary tokens, and
teacher and student both see that same corrupted batch. The teacher then labels texts the
dataset does not hold, which is what lets a small transfer set teach a student more than
its labels can (BENCHMARKS.md, "Transformer tasks": a 1-layer student on 300 texts).

Special tokens ([CLS], [SEP], padding, ...) and padding positions are never replaced, and
the labels are left as they are: the teacher's outputs, not the labels, are what the
student learns on a corrupted text. Draws come from the augmenter's own generator, whose
state goes into the checkpoint, so a resumed run corrupts the same tokens."""

from __future__ import annotations

from typing import Any

import torch


class TokenNoise:
    """Replaces each real, non-special token with probability `share` by a token drawn
    uniformly from the vocabulary's non-special tokens."""

    def __init__(self, share: float, tokenizer: Any, vocab_size: int, seed: int) -> None:
        if not 0.0 < share <= 0.5:
            raise ValueError(f"augment.tokens must be in (0, 0.5], got {share}")
        self.share = share
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.special = torch.tensor(sorted(special), dtype=torch.long)
        self.allowed = torch.tensor(
            [i for i in range(vocab_size) if i not in special], dtype=torch.long
        )  # (V',)
        if len(self.allowed) == 0:
            raise ValueError("the tokenizer has no ordinary tokens to draw replacements from")
        self.generator = torch.Generator().manual_seed(seed + 104729)

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of `batch` whose input_ids have the drawn tokens replaced."""
        ids = batch["input_ids"]  # (B, T)
        cpu = ids.cpu()
        real = batch["attention_mask"].cpu().bool() & ~torch.isin(cpu, self.special)
        hit = (torch.rand(cpu.shape, generator=self.generator) < self.share) & real
        picks = torch.randint(len(self.allowed), cpu.shape, generator=self.generator)
        corrupted = torch.where(hit, self.allowed[picks], cpu)
        return {**batch, "input_ids": corrupted.to(ids.device)}

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
