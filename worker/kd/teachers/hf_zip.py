"""The `hf_zip` entry of the teacher registry: a model-directory ZIP as a `Teacher` over
token ids, so that file validation can load and run it like any other teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from worker.kd.hf.models import LoadedTeacher, forward, load_teacher
from worker.kd.teachers.base import Teacher
from worker.kd.training.evaluate import count_parameters
from worker.kd.training.features import LayerShapes

EXAMPLE_TEXTS = ["a short example", "another example sentence"]


class TransformerTeacher(Teacher):
    """`teacher(input_ids)` gives the task's output: logits (B, K), a sentence embedding
    (B, D) or next-token logits (B, T, V); layers are hidden states by number."""

    format = "hf_zip"

    def __init__(self, loaded: LoadedTeacher) -> None:
        super().__init__()
        self.loaded = loaded
        self.model = loaded.model
        self.task = loaded.task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = {"input_ids": x.long(), "attention_mask": torch.ones_like(x, dtype=torch.long)}
        with torch.no_grad():
            return forward(self.model, self.task, batch, self.loaded.layout).output

    def layers(self, example: torch.Tensor) -> LayerShapes:
        batch = {"input_ids": example.long(), "attention_mask": torch.ones_like(example).long()}
        with torch.no_grad():
            out = forward(self.model, self.task, batch, self.loaded.layout, hidden=True)
        return [(f"hidden_states.{i}", tuple(h.shape[1:])) for i, h in enumerate(out.hidden_states)]

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.model)

    def example_input(self) -> torch.Tensor | None:
        tokens = self.loaded.tokenizer(EXAMPLE_TEXTS, padding=True, return_tensors="pt")
        ids: torch.Tensor = tokens["input_ids"]
        return ids  # (2, T)

    def __del__(self) -> None:
        self.loaded.cleanup()


def load_hf_zip(path: Path, arch: dict[str, Any] | None, example: torch.Tensor | None) -> Teacher:
    return TransformerTeacher(load_teacher(Path(path), None))
