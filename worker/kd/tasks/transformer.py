"""The transformer adapters, one per task kind of a Hugging Face teacher: sequence
classification, sentence embedding and causal LM. Examples are tokenized texts padded per
batch; the student's forward returns the task's output (and the hidden states and attention
maps the objective pairs); validation measures the task's quality against the teacher's
fixed outputs on the validation texts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from worker.kd.hf import measure
from worker.kd.hf.augment import TokenNoise
from worker.kd.hf.data import Encoded
from worker.kd.hf.layout import ModelLayout
from worker.kd.hf.models import Outputs, forward
from worker.kd.hf.objective import TransformerObjective
from worker.kd.training.distributed import WHOLE
from worker.kd.training.trainer import Cast


class TransformerTeacherSource(Protocol):
    """The teacher's outputs for training examples `idx`, padded as `batch` is."""

    def __call__(self, idx: list[int], batch: dict[str, torch.Tensor], /) -> Outputs: ...


def _float(out: Outputs) -> Outputs:
    """The student's outputs in float32 for the objective, whatever autocast computed."""
    return Outputs(
        out.output.float(),
        tuple(h.float() for h in out.hidden_states),
        tuple(a.float() for a in out.attentions),
    )


@dataclass
class TransformerAdapter:
    """What every transformer task shares: batches of token ids, the teacher's outputs for
    them (None for the teacher-free baseline, whose objective reads no teacher), and the
    objective on the student's outputs. Subclasses name the task and its validation."""

    task: ClassVar[str]
    # Why a teacher-free baseline cannot be trained, or None when it can (labels aside).
    no_baseline: ClassVar[str | None] = None
    baseline_target: ClassVar[str] = "labels"

    student: nn.Module
    objective: TransformerObjective
    teacher: TransformerTeacherSource | None
    data: Encoded
    val: Encoded
    teacher_val: measure.ValOutputs
    tokenizer: Any
    layout: ModelLayout | None
    device: torch.device
    # distillation.augment.tokens: the corruption teacher and student both see (None: off;
    # the teacher-free baseline, which has no teacher to label a corrupted text, gets none).
    noise: TokenNoise | None = None

    @property
    def num_examples(self) -> int:
        return len(self.data)

    def loss(
        self, idx: torch.Tensor, cast: Cast, part: slice = WHOLE
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows = idx[part].tolist()
        objective = self.objective
        batch = self.data.batch(rows, self.tokenizer, self.device)  # each (B, T)
        if self.noise is not None and self.teacher is not None:
            batch = self.noise(batch)
        teacher_out = None if self.teacher is None else self.teacher(rows, batch)
        with cast():
            student_out = forward(self.student, self.task, batch, self.layout,
                                  hidden=objective.needs_hidden,
                                  attentions=objective.needs_attentions)  # fmt: skip
        student_out = _float(student_out)
        if teacher_out is None:
            teacher_out = Outputs(student_out.output.detach())
        labels = None if self.data.labels is None else self.data.labels[rows].to(self.device)
        return objective(student_out, teacher_out, batch, labels)

    def predict(self, model: nn.Module) -> measure.ValOutputs:
        return measure.predict(model, self.task, self.val, self.tokenizer, self.layout,
                               self.device)  # fmt: skip

    def evaluate(self) -> dict[str, float]:
        mine = self.predict(self.student)
        return {"val_accuracy": measure.quality(self.task, mine, self.teacher_val)}

    def rng_state(self) -> torch.Tensor:
        if self.noise is not None:
            return self.noise.state()
        return torch.Generator().get_state()  # nothing is drawn besides the global RNG

    def set_rng_state(self, state: torch.Tensor) -> None:
        if self.noise is not None:
            self.noise.set_state(state)


class SequenceClassificationAdapter(TransformerAdapter):
    task = "sequence_classification"


class SentenceEmbeddingAdapter(TransformerAdapter):
    task = "sentence_embedding"
    no_baseline = "a sentence-embedding student has no target to learn from without its teacher"

    def evaluate(self) -> dict[str, float]:
        mine = self.predict(self.student)
        s_emb, t_emb = torch.cat(mine.outputs), torch.cat(self.teacher_val.outputs)
        return {
            "val_accuracy": measure.quality(self.task, mine, self.teacher_val),
            "val_cosine": measure.mean_cosine(s_emb, t_emb),
        }


class CausalLMAdapter(TransformerAdapter):
    task = "causal_lm"
    baseline_target = "next tokens"


TRANSFORMER_ADAPTERS: dict[str, type[TransformerAdapter]] = {
    adapter.task: adapter
    for adapter in (SequenceClassificationAdapter, SentenceEmbeddingAdapter, CausalLMAdapter)
}
