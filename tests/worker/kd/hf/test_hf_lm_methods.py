"""Causal-LM methods that learn from generated text: `sequence` (the teacher's completions,
generated resumably) and `on_policy` (GKD: the student's completions scored by the
teacher, generalized JSD), their resume and cancel; the generalized JSD's reference values."""

from __future__ import annotations

import itertools
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.kd.hf.factories import gpt2_dir, write_jsonl, zip_dir
from worker.kd.engine import distill, prepare
from worker.kd.errors import Cancelled, InvalidSpec
from worker.kd.hf.generate import pack, split_prompt
from worker.kd.hf.models import forward
from worker.kd.jobs import HFPrepared
from worker.kd.losses.divergence import generalized_jsd
from worker.kd.report.transformer import predict
from worker.kd.spec import JobSpec
from worker.kd.tasks.sequence_kd import (
    PROGRESS_FILE,
    completion_loss,
    generated_dataset,
    teacher_generations,
)
from worker.kd.tasks.transformer_job import train_student
from worker.kd.training.checkpoint import Checkpointing
from worker.kd.training.reporting import MemoryReporter, RecordingReporter

# 30 texts, of which the training split (selection and evaluation carved off) is generated
# for in chunks of 16 prompts and trained on in batches of 8.
TRAINING = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "device": "cpu",
            "weight_decay": 0.01, "schedule": "warmup_cosine", "warmup_fraction": 0.05}  # fmt: skip


def job(method: str, **distillation: Any) -> JobSpec:
    return JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": {"arch": "hf", "config": {"n_layer": 2}},
        "dataset": {"file_id": "d", "max_length": 24},
        "distillation": {"method": method, "temperature": 1.0, "alpha": 0.5,
                         "generation": {"max_new_tokens": 6, "completions_per_prompt": 2},
                         **distillation},
        "training": TRAINING,
    })  # fmt: skip


@dataclass
class StopAt(MemoryReporter):
    """Asks to stop once, at poll `after_polls + 1` (polled before each generation chunk and
    each training step)."""

    after_polls: int = 0
    polls: int = 0

    def should_stop(self) -> bool:
        self.polls += 1
        return self.polls == self.after_polls + 1


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lm")
    teacher = zip_dir(gpt2_dir(root / "m"), root / "t.zip")
    return teacher, write_jsonl(root / "d.jsonl", 30, labeled=False)


def prepared_job(files: tuple[Path, Path], spec: JobSpec) -> HFPrepared:
    prepared = prepare(spec, *files)
    assert isinstance(prepared, HFPrepared)
    return prepared


def train(
    files: tuple[Path, Path], spec: JobSpec, reporter: MemoryReporter, ckpt: Checkpointing | None
) -> tuple[HFPrepared, RecordingReporter]:
    """Training alone (no report): the student's weights after `train_student`."""
    prepared = prepared_job(files, spec)
    recorder = RecordingReporter(reporter)
    try:
        train_student(prepared, predict(prepared, prepared.teacher.model), recorder, ckpt, None)
    finally:
        prepared.teacher.cleanup()
    return prepared, recorder


def same_weights(a: HFPrepared, b: HFPrepared) -> bool:
    mine, theirs = a.student.state_dict(), b.student.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


# Generalized JSD --------------------------------------------------------------------------


def _generalized_jsd(
    student: torch.Tensor, teacher: torch.Tensor, beta: float, temperature: float
) -> torch.Tensor:
    """The shared generalized JSD (worker.kd.losses.divergence) row by row: (N, V) -> (N,)."""
    return torch.stack(
        [generalized_jsd(student[i : i + 1], teacher[i : i + 1], beta, temperature)
         for i in range(len(student))]
    )  # fmt: skip


def test_generalized_jsd_matches_its_definition_and_limits() -> None:
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.0], [2.0, -1.0, 0.0]])
    p_s, p_t = student.softmax(-1).double(), teacher.softmax(-1).double()

    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p * (p / q).log()).sum(-1)

    for beta in (0.1, 0.5, 0.9):
        mixture = beta * p_t + (1 - beta) * p_s
        expected = beta * kl(p_t, mixture) + (1 - beta) * kl(p_s, mixture)
        got = _generalized_jsd(student, teacher, beta, 1.0)
        assert torch.allclose(got.double(), expected, atol=1e-6)
    assert torch.allclose(_generalized_jsd(student, teacher, 0.0, 1.0).double(), kl(p_t, p_s))
    assert torch.allclose(_generalized_jsd(student, teacher, 1.0, 1.0).double(), kl(p_s, p_t))
    # Golden value (row 0, beta 0.5): the plain Jensen-Shannon divergence in nats, as
    # scipy.spatial.distance.jensenshannon(p, q) ** 2 gives it.
    golden = _generalized_jsd(student, teacher, 0.5, 1.0)[0].item()
    assert golden == pytest.approx(0.108578247, abs=1e-6)
    assert torch.allclose(_generalized_jsd(student, student, 0.5, 1.0), torch.zeros(2), atol=1e-7)
    # The temperature divides both models' logits.
    halved = _generalized_jsd(student / 2, teacher / 2, 0.5, 1.0)
    assert torch.allclose(_generalized_jsd(student, teacher, 0.5, 2.0), halved)


def test_pack_marks_completion_tokens_only() -> None:
    assert split_prompt([5, 6, 7, 8, 9]) == ([5, 6], [7, 8, 9])
    assert split_prompt([5]) == ([5], [])
    batch = pack([[1, 2], [3]], [[4], [5, 6, 7]], pad_id=0, device=torch.device("cpu"))
    assert batch.inputs["input_ids"].tolist() == [[1, 2, 4, 0], [3, 5, 6, 7]]
    assert batch.inputs["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.targets().tolist() == [4, 5, 6, 7]
    logits = torch.arange(2 * 4 * 1.0).view(2, 4, 1)  # (B, T, V): row b, position t
    assert batch.rows(logits).view(-1).tolist() == [1.0, 4.0, 5.0, 6.0]  # t-1 predicts t


# Sequence-level KD ------------------------------------------------------------------------


def test_sequence_learns_the_teachers_generations(files: tuple[Path, Path], tmp_path: Path) -> None:
    spec = job("sequence", alpha=0.0)
    prepared = prepared_job(files, spec)
    reporter = MemoryReporter()
    result = distill(prepared, tmp_path / "out", reporter)

    rows = [
        json.loads(line) for line in result.artifacts["generations.jsonl"].read_text().splitlines()
    ]
    trained = len(prepared.train)  # the training split (selection and evaluation held out)
    assert len(rows) == trained * 2  # every training prompt, completions_per_prompt 2
    assert {r["sample"] for r in rows} == {0, 1} and len({r["example"] for r in rows}) == trained
    tokenizer = prepared.teacher.tokenizer
    first = split_prompt(prepared.train.features[0]["input_ids"])[0]
    assert rows[0]["prompt"] == tokenizer.decode(first)
    report = result.report
    assert report["method"] == "sequence" and report["loss"] == ["1*ce"]
    kinds = [kind for kind, _, _ in reporter.events]
    assert kinds.index("generation_finished") < kinds.index("training_started")
    with zipfile.ZipFile(result.artifacts["student.zip"]) as archive:
        config = json.loads(archive.read("generation_config.json"))
    assert config["eos_token_id"] == tokenizer.eos_token_id


@dataclass
class TeacherPasses(MemoryReporter):
    """The teacher's forward passes so far, noted at every poll (before each generation
    chunk and each training step)."""

    calls: int = 0
    at_polls: list[int] = field(default_factory=list)

    def should_stop(self) -> bool:
        self.at_polls.append(self.calls)
        return False


@pytest.mark.parametrize(("alpha", "per_step"), [(0.0, 0), (0.5, 1)])
def test_sequence_runs_the_teacher_on_its_texts_only_for_a_term_on_its_logits(
    files: tuple[Path, Path], alpha: float, per_step: int
) -> None:
    """alpha 0 (ce on the generated tokens alone) reads no teacher logits: after generating,
    the teacher runs on no training batch; alpha 0.5 runs it once per step."""
    prepared = prepared_job(files, job("sequence", alpha=alpha))
    reporter = TeacherPasses()

    def count(*_: Any) -> None:
        reporter.calls += 1

    prepared.teacher.model.register_forward_pre_hook(count)
    try:
        teacher_val = predict(prepared, prepared.teacher.model)
        train_student(prepared, teacher_val, RecordingReporter(reporter), None, None)
    finally:
        prepared.teacher.cleanup()
    (steps,) = [d["steps"] for kind, _, d in reporter.events if kind == "training_started"]
    polls = reporter.at_polls[-steps:]  # one before each training step
    assert [b - a for a, b in itertools.pairwise(polls)] == [per_step] * (steps - 1)
    assert reporter.calls - polls[-1] == per_step  # the last step's
    assert polls[0] > 0  # the teacher generated the texts before


def test_sequence_loss_reads_generated_tokens_only(files: tuple[Path, Path]) -> None:
    """alpha 0: cross-entropy over the completion tokens, the prompt's tokens unread."""
    prepared = prepared_job(files, job("sequence", alpha=0.0))
    try:
        generated = teacher_generations(prepared, MemoryReporter(), None)
    finally:
        prepared.teacher.cleanup()
    data, prompt_lengths = generated_dataset(generated)
    rows = [0, 1, 2]
    prompts = [data.features[i]["input_ids"][: prompt_lengths[i]] for i in rows]
    completions = [data.features[i]["input_ids"][prompt_lengths[i] :] for i in rows]
    batch = pack(prompts, completions, int(prepared.teacher.tokenizer.pad_token_id),
                 torch.device("cpu"))  # fmt: skip
    prepared.student.eval()
    with torch.no_grad():
        logits = forward(prepared.student, "causal_lm", batch.inputs, None).output
    expected = []
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        for offset, token in enumerate(completion):
            position = len(prompt) + offset - 1
            expected.append(-logits[row, position].log_softmax(-1)[token])
    total, parts = completion_loss(prepared.objective, batch, logits, None)
    assert total.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    assert set(parts) == {"ce"}


@pytest.mark.parametrize("stop_after", [1, 4])  # mid-generation; mid-training (after 2 steps)
def test_sequence_resumes_without_redoing_finished_prompts(
    files: tuple[Path, Path], tmp_path: Path, stop_after: int
) -> None:
    spec = job("sequence")
    unbroken, _ = train(files, spec, MemoryReporter(), None)
    ckpt = Checkpointing(tmp_path / "ckpt" / "checkpoint.pt", every_steps=1)
    with pytest.raises(Cancelled):
        train(files, spec, StopAt(after_polls=stop_after), ckpt)
    progress = (ckpt.path.parent / PROGRESS_FILE).read_text().splitlines()
    assert len(progress) == 1 + min(stop_after, 2)  # the key, then the chunks done

    reporter = MemoryReporter()
    resumed, _ = train(files, spec, reporter, ckpt)
    started = next(data for kind, _, data in reporter.events if kind == "generation_started")
    assert started["chunks_done"] == min(stop_after, 2)
    assert resumed.generated is not None and unbroken.generated is not None
    assert [g.completions for g in resumed.generated] == [g.completions for g in unbroken.generated]
    assert same_weights(resumed, unbroken)


# On-policy KD (GKD) -----------------------------------------------------------------------


def test_on_policy_trains_on_student_generations_deterministically(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    spec = job("on_policy", lmbda=0.5, beta=0.5)
    first, recorder = train(files, spec, MemoryReporter(), None)
    second, _ = train(files, spec, MemoryReporter(), None)
    assert same_weights(first, second)  # seeded: the same coins, the same samples
    shares = [v for name, _, _, v in recorder.metrics if name == "train_student_generated_epoch"]
    assert len(shares) == 2 and 0.0 < sum(shares) / 2 < 1.0  # both kinds of batch ran
    losses = [v for name, _, _, v in recorder.metrics if name == "train_loss_epoch"]
    assert all(math.isfinite(v) and v >= 0.0 for v in losses)

    reporter = MemoryReporter()
    always, _ = train(files, job("on_policy", lmbda=1.0), reporter, None)
    finished = [d for kind, _, d in reporter.events if kind == "on_policy_finished"]
    assert finished == [{"student_batches": 6}]  # every one of the 6 steps
    assert not same_weights(always, first)


def test_on_policy_job_reports_its_method(files: tuple[Path, Path], tmp_path: Path) -> None:
    result = distill(prepared_job(files, job("on_policy", beta=0.0)), tmp_path / "out",
                     MemoryReporter())  # fmt: skip
    report = result.report
    assert report["method"] == "on_policy"
    assert report["loss"] == ["1*generalized_jsd(beta=0)"]
    assert "generations.jsonl" not in result.artifacts
    assert report["speculative"]["identical"] is True
    card = result.artifacts["README.md"].read_text()
    assert "- Method on_policy" in card and "As the teacher's draft model" in card


# Stopped after 1 step; after 4 (mid-epoch 2): each resumed step redraws its coin and
# sample from the checkpointed generator, so the student generates what it would have.
@pytest.mark.parametrize("stop_after", [1, 4])
def test_on_policy_resumes_exactly(
    files: tuple[Path, Path], tmp_path: Path, stop_after: int
) -> None:
    spec = job("on_policy", lmbda=0.5)
    unbroken, _ = train(files, spec, MemoryReporter(), None)
    ckpt = Checkpointing(tmp_path / "ckpt" / "checkpoint.pt", every_steps=1)
    with pytest.raises(Cancelled):
        train(files, spec, StopAt(after_polls=stop_after), ckpt)
    assert ckpt.path.exists()
    reporter = MemoryReporter()
    resumed, _ = train(files, spec, reporter, ckpt)
    assert [kind for kind, _, _ in reporter.events].count("resumed") == 1
    assert same_weights(resumed, unbroken)


def test_on_policy_cancel_keeps_a_checkpoint(files: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt = Checkpointing(tmp_path / "ckpt" / "checkpoint.pt")
    reporter = MemoryReporter(stop=True)
    with pytest.raises(Cancelled):
        train(files, job("on_policy"), reporter, ckpt)
    assert ckpt.path.exists()
    assert "training_started" in [kind for kind, _, _ in reporter.events]


def test_methods_refuse_losses_they_cannot_use(files: tuple[Path, Path]) -> None:
    with pytest.raises(InvalidSpec, match="on_policy's loss is the generalized JSD"):
        prepared_job(files, job("on_policy", losses=[{"kind": "soft_ce"}]))
    with pytest.raises(InvalidSpec, match="'hidden_cosine' compares layers"):
        prepared_job(files, job("sequence", losses=[{"kind": "hidden_cosine"}]))
