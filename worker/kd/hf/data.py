"""Text examples tokenised with the teacher's tokenizer; batches padded to their longest
example (dynamic padding), truncated to the spec's `max_length`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worker.kd.datasets.splits import split_indices
from worker.kd.errors import InvalidDataset
from worker.kd.formats import TextFormat, sniff_text
from worker.kd.hf.textdata import TextExample, read_text_dataset
from worker.kd.spec import DatasetSpec

TEXT_ACCEPTED = (
    'JSONL with a "text" field (and "label", "text_pair" optional) or plain text, one '
    "example per line"
)


@dataclass
class Encoded:
    """One split: the examples, their token ids and (for classification) labels."""

    examples: list[TextExample]
    features: list[dict[str, list[int]]]
    labels: torch.Tensor | None  # (N,) int64

    def __len__(self) -> int:
        return len(self.features)

    def batch(
        self, idx: list[int], tokenizer: Any, device: torch.device
    ) -> dict[str, torch.Tensor]:
        padded = tokenizer.pad([self.features[i] for i in idx], return_tensors="pt")
        return {name: value.to(device) for name, value in padded.items()}  # each (B, T)

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]


def read_examples(spec: DatasetSpec, path: Path | None) -> list[TextExample]:
    if path is None:
        raise InvalidDataset(f"A transformer job needs an uploaded text dataset: {TEXT_ACCEPTED}.")
    fmt: TextFormat | None
    if spec.format in ("jsonl", "text"):
        fmt = spec.format
    else:
        with Path(path).open("rb") as handle:
            fmt = sniff_text(handle.read(4096))
    if fmt is None:
        raise InvalidDataset(f"The dataset of a transformer job must be {TEXT_ACCEPTED}.")
    return read_text_dataset(Path(path), fmt)


def encode_splits(
    examples: list[TextExample], tokenizer: Any, max_length: int, val_fraction: float, seed: int
) -> tuple[Encoded, Encoded]:
    train, val = split_indices(len(examples), val_fraction, seed)
    return (
        encode([examples[i] for i in train], tokenizer, max_length),
        encode([examples[i] for i in val], tokenizer, max_length),
    )


def encode(examples: list[TextExample], tokenizer: Any, max_length: int) -> Encoded:
    texts = [e.text for e in examples]
    pairs = [e.text_pair or "" for e in examples]
    with_pairs = any(e.text_pair for e in examples)
    tokens = tokenizer(texts, pairs if with_pairs else None, truncation=True, max_length=max_length)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokens]
    features = [{n: list(tokens[n][i]) for n in names} for i in range(len(examples))]
    labels = [e.label for e in examples]
    tensor = torch.tensor(labels) if labels and all(y is not None for y in labels) else None
    return Encoded(examples, features, tensor)
