"""`distillation.method: on_policy`: generalized knowledge distillation (GKD; Agarwal et al.
2024, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes",
arXiv:2306.13649).

For each batch, with probability `lmbda` the completions of the batch's prompts are sampled
from the student as it is now (`distillation.generation`), otherwise they are the data's;
the teacher scores every completion token and the loss is the generalized Jensen-Shannon
divergence with `beta` between the two next-token distributions at each completion token,
averaged over those tokens (beta 0: forward KL(teacher || student); 1: reverse
KL(student || teacher)), both at the KD `temperature`.

The coin and the sampling seed are drawn from the adapter's own generator, seeded with
training.seed and saved in every checkpoint (the Trainer's adapter_rng): a job is
deterministic given its seed, and one stopped at any step (after a student generation or
before) resumes to the weights of an unbroken run. Sampling itself runs from a state seeded
by the drawn seed alone (`hf.generate.sample`), so it leaves the training RNG untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from worker.kd.errors import InvalidSpec
from worker.kd.hf.generate import pack, prompt_split, sample
from worker.kd.hf.models import forward
from worker.kd.hf.objective import Term, TransformerObjective
from worker.kd.losses import LogitLoss
from worker.kd.losses.divergence import generalized_jsd
from worker.kd.spec import GenerationSpec, JobSpec
from worker.kd.tasks.sequence_kd import completion_loss
from worker.kd.tasks.transformer import CausalLMAdapter
from worker.kd.training.distributed import WHOLE
from worker.kd.training.trainer import Cast

SEED_OFFSET = 7919  # the adapter's generator starts from training.seed + this


class _GeneralizedJSDLoss(LogitLoss):
    """GKD's generalized JSD, averaged over rows (completion tokens)."""

    key: ClassVar[str] = "generalized_jsd"

    def __init__(self, beta: float, temperature: float) -> None:
        super().__init__()
        self.beta, self.temperature = beta, temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return generalized_jsd(student, teacher, self.beta, self.temperature)


def on_policy_objective(spec: JobSpec) -> TransformerObjective:
    """One term: the generalized JSD with the spec's beta, at the KD temperature."""
    d = spec.distillation
    if d.losses:
        raise InvalidSpec(
            "distillation.losses: method on_policy's loss is the generalized JSD between "
            "student and teacher (set it with distillation.beta); remove losses, or use "
            "method logits or sequence for other terms."
        )
    loss = _GeneralizedJSDLoss(d.beta, d.temperature)
    return TransformerObjective("causal_lm", [Term(f"generalized_jsd(beta={d.beta:g})", 1.0, loss)])


@dataclass
class OnPolicyAdapter(CausalLMAdapter):
    """Batches of prompts completed by the student (probability `lmbda`) or by the data."""

    lmbda: float = 0.5
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    seed: int = 0
    generator: torch.Generator = field(init=False)
    student_batches: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + SEED_OFFSET)

    def loss(
        self, idx: torch.Tensor, cast: Cast, part: slice = WHOLE
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows = idx[part].tolist()  # part: a rank's share (transformer jobs run on one process)
        split = [prompt_split(self.data, i) for i in rows]
        prompts = [prompt for prompt, _ in split]
        on_policy = float(torch.rand((), generator=self.generator)) < self.lmbda
        seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        pad, eos = int(self.tokenizer.pad_token_id), self.tokenizer.eos_token_id
        if on_policy:
            completions = sample(self.student, prompts, self.generation, pad, eos, seed)
            self.student_batches += 1
        else:
            completions = [completion for _, completion in split]
        batch = pack(prompts, completions, pad, self.device)
        assert self.teacher is not None  # on_policy always has its teacher
        teacher_logits = self.teacher(rows, batch.inputs).output  # scores every token
        with cast():
            student = forward(self.student, self.task, batch.inputs, self.layout)
        total, parts = completion_loss(self.objective, batch, student.output, teacher_logits)
        parts["student_generated"] = torch.tensor(float(on_policy), device=total.device)
        return total, parts

    def rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
