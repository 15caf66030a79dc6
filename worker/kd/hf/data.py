"""Text examples tokenised with the teacher's tokenizer; batches padded to their longest
example (dynamic padding), truncated to the spec's `max_length`.

A job's texts are split three ways, as tensor jobs split arrays
(`worker.kd.datasets.splits`): training texts; selection texts, which choose (best epoch,
early stopping, a search's trials); and evaluation texts, which no choice has seen and on
which the report is measured. Evaluation is `val_fraction` of the dataset carved first
(seeded), then selection `val_fraction` of the rest (seed + 1); a causal-LM job's
`dataset.eval_file_id` upload, when given, is the evaluation data instead, and selection
is carved from the dataset. With fewer than 2 texts left after carving evaluation, the
training texts select.

Rows with a prompt and a completion (and chats ending with the assistant's turn) learn
and are scored on the completion's tokens only: each batch carries a `loss_mask` (B, T),
1 at those tokens (and at every real token of the other rows), which the model never
sees (`worker.kd.hf.models.forward` passes the model its inputs only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from worker.kd.datasets.splits import split_indices
from worker.kd.errors import InvalidDataset
from worker.kd.formats import TextFormat, sniff_text
from worker.kd.hf.textdata import TextExample, read_text_dataset
from worker.kd.spec import DatasetSpec

TEXT_ACCEPTED = (
    'JSONL with a "text" field (and "label", "text_pair" optional), a "prompt" (and '
    '"completion" optional) or chat "messages"; or plain text, one example per line'
)
LOSS_MASK = "loss_mask"  # a batch's (B, T) mask of the tokens that are learned and scored
SelectionSplit = Literal["carved", "x_train"]
EvaluationSplit = Literal["carved", "eval_file"]


@dataclass
class Encoded:
    """One split: the examples, their token ids, the number of prompt tokens of each
    (0: every token counts) and (for classification) labels."""

    examples: list[TextExample]
    features: list[dict[str, list[int]]]
    labels: torch.Tensor | None  # (N,) int64
    prompt_lengths: list[int] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def masked(self) -> bool:
        """Whether some example learns only part of its tokens."""
        return any(self.prompt_lengths)

    def batch(
        self, idx: list[int], tokenizer: Any, device: torch.device
    ) -> dict[str, torch.Tensor]:
        padded = tokenizer.pad([self.features[i] for i in idx], return_tensors="pt")
        batch = {name: value.to(device) for name, value in padded.items()}  # each (B, T)
        if self.masked:
            prompts = torch.tensor([self.prompt_lengths[i] for i in idx], device=device)
            batch[LOSS_MASK] = loss_mask(batch["attention_mask"], prompts)
        return batch

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]


def loss_mask(attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """(B, T) 1 at the real tokens after each row's first `prompt_lengths` real tokens
    (whichever side the padding is on)."""
    position = attention_mask.cumsum(dim=1)  # (B, T): 1-based index among real tokens
    return attention_mask * (position > prompt_lengths[:, None]).to(attention_mask.dtype)


def target_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) bool: the tokens that are learned and scored (every real token, or the
    completions' where the batch has a loss mask)."""
    return batch.get(LOSS_MASK, batch["attention_mask"]).bool()


def read_examples(spec: DatasetSpec, path: Path | None, what: str = "dataset") -> list[TextExample]:
    if path is None:
        raise InvalidDataset(f"A transformer job needs an uploaded text dataset: {TEXT_ACCEPTED}.")
    fmt: TextFormat | None
    if spec.format in ("jsonl", "text"):
        fmt = spec.format
    else:
        with Path(path).open("rb") as handle:
            fmt = sniff_text(handle.read(4096))
    if fmt is None:
        raise InvalidDataset(f"The {what} of a transformer job must be {TEXT_ACCEPTED}.")
    try:
        return read_text_dataset(Path(path), fmt)
    except InvalidDataset as exc:
        if what == "dataset":
            raise
        raise InvalidDataset(f"The {what}: {exc.message}") from exc


@dataclass
class TextSplits:
    """Training, selection and evaluation texts, disjoint (or evaluation from its own
    file), and where selection and evaluation came from."""

    train: Encoded
    selection: Encoded
    evaluation: Encoded
    selection_split: SelectionSplit
    evaluation_split: EvaluationSplit

    def describe(self) -> dict[str, Any]:
        """The report's `evaluation` section."""
        return {
            "split": self.evaluation_split,
            "samples": len(self.evaluation),
            "selection": {"split": self.selection_split, "samples": len(self.selection)},
        }


def encode_splits(
    examples: list[TextExample],
    tokenizer: Any,
    max_length: int,
    val_fraction: float,
    seed: int,
    eval_examples: list[TextExample] | None = None,
) -> TextSplits:
    """The three splits by the rules above, tokenised."""
    if eval_examples is not None:
        train_at, selection_at = split_indices(len(examples), val_fraction, seed)
        parts = [[examples[i] for i in train_at], [examples[i] for i in selection_at],
                 eval_examples]  # fmt: skip
        chosen: tuple[SelectionSplit, EvaluationSplit] = ("carved", "eval_file")
    else:
        rest, held = split_indices(len(examples), val_fraction, seed)
        if len(rest) < 2:
            parts = [[examples[i] for i in rest]] * 2 + [[examples[i] for i in held]]
            chosen = ("x_train", "carved")
        else:
            train_pos, selection_pos = split_indices(len(rest), val_fraction, seed + 1)
            parts = [
                [examples[rest[i]] for i in train_pos],
                [examples[rest[i]] for i in selection_pos],
                [examples[i] for i in held],
            ]
            chosen = ("carved", "carved")
    train, selection, evaluation = (encode(p, tokenizer, max_length) for p in parts)
    return TextSplits(train, selection, evaluation, *chosen)


def encode(examples: list[TextExample], tokenizer: Any, max_length: int) -> Encoded:
    examples = [render(e, tokenizer) for e in examples]
    texts = [e.text for e in examples]
    pairs = [e.text_pair or "" for e in examples]
    with_pairs = any(e.text_pair for e in examples)
    tokens = tokenizer(texts, pairs if with_pairs else None, truncation=True, max_length=max_length)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokens]
    features = [{n: list(tokens[n][i]) for n in names} for i in range(len(examples))]
    prompt_lengths = [0] * len(examples)
    for i, example in enumerate(examples):
        if example.completion is not None:
            features[i], prompt_lengths[i] = _prompt_completion(example, tokenizer, max_length)
    labels = [e.label for e in examples]
    tensor = torch.tensor(labels) if labels and all(y is not None for y in labels) else None
    return Encoded(examples, features, tensor, prompt_lengths)


def _prompt_completion(
    example: TextExample, tokenizer: Any, max_length: int
) -> tuple[dict[str, list[int]], int]:
    """Prompt and completion tokenised apart and joined (so the boundary is exact, where a
    BPE merge across it would blur it), truncated to `max_length`; the prompt's length."""
    assert example.prompt is not None and example.completion is not None
    special = not (example.messages and getattr(tokenizer, "chat_template", None))
    prompt = list(tokenizer(example.prompt, add_special_tokens=special)["input_ids"])
    completion = list(tokenizer(example.completion, add_special_tokens=False)["input_ids"])
    ids = (prompt + completion)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids)}, min(len(prompt), len(ids))


def render(example: TextExample, tokenizer: Any) -> TextExample:
    """A chat rendered with the tokenizer's chat template when it has one (the plain
    `role: content` rendering of `worker.kd.hf.textdata` otherwise, as read)."""
    if not example.messages or not getattr(tokenizer, "chat_template", None):
        return example
    turns = [{"role": role, "content": content} for role, content in example.messages]
    ends_with_reply = turns[-1]["role"] == "assistant"
    history = turns[:-1] if ends_with_reply else turns
    prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    if not ends_with_reply:
        return dataclasses.replace(example, text=prompt, prompt=prompt, completion=None)
    full = tokenizer.apply_chat_template(turns, tokenize=False)
    if not full.startswith(prompt) or len(full) == len(prompt):
        raise InvalidDataset(
            "The tokenizer's chat template does not render a chat as its history followed by "
            "the assistant's reply, so the reply's tokens cannot be told apart; give the "
            'rows as {"prompt": ..., "completion": ...} instead.'
        )
    return dataclasses.replace(example, text=full, prompt=prompt, completion=full[len(prompt) :])


def check_targets(splits: TextSplits, task: str) -> None:
    """Prompt and chat rows are for causal LMs; each split needs a token to learn or score."""
    every = [*splits.train.examples, *splits.selection.examples, *splits.evaluation.examples]
    if task != "causal_lm":
        kinds = sorted({e.kind for e in every} - {"text"})
        if kinds:
            raise InvalidDataset(
                f"The dataset has {' and '.join(kinds)} rows, which a causal_lm teacher reads; "
                f"a {task} teacher reads 'text' rows."
            )
        return
    for name, part in (("training", splits.train), ("evaluation", splits.evaluation)):
        if not any(_targets(f, p) for f, p in zip(part.features, part.prompt_lengths, strict=True)):
            raise InvalidDataset(
                f"No {name} text has a token to predict within dataset.max_length: the prompts "
                "fill it (or every text is a single token); raise dataset.max_length or shorten "
                "the prompts."
            )


def _targets(features: dict[str, list[int]], prompt_length: int) -> int:
    """Next tokens a causal LM predicts in one text: positions 1.. that are learned."""
    return max(0, len(features["input_ids"]) - max(prompt_length, 1))
