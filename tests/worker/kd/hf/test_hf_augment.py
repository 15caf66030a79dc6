"""Consistent teaching for texts (`distillation.augment.tokens`): a share of each batch's
real tokens replaced, teacher and student seeing the same corrupted batch; special tokens,
padding and the teacher-free baseline left alone; exact resume; a clear error where it
does not apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from tests.worker.kd.hf.factories import bert_dir, bert_tokenizer, gpt2_dir, write_jsonl, zip_dir
from tests.worker.kd.hf.test_hf_resume import StopAt
from worker.kd.engine import DistillResult, distill, prepare
from worker.kd.errors import Cancelled, InvalidSpec
from worker.kd.hf.augment import TokenNoise
from worker.kd.spec import DEFAULT_TOKEN_SHARE, AugmentSpec, JobSpec
from worker.kd.tasks.transformer_job import HFPrepared
from worker.kd.training.checkpoint import Checkpointing
from worker.kd.training.reporting import MemoryReporter

TRAINING = {"epochs": 3, "batch_size": 8, "learning_rate": 1e-3, "device": "cpu",
            "weight_decay": 0.01, "schedule": "warmup_cosine", "warmup_fraction": 0.05}  # fmt: skip


def spec(tokens: float, **extra: Any) -> JobSpec:
    return JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": {"arch": "from_teacher", "num_layers": 2},
        "dataset": {"file_id": "d", "max_length": 24}, "training": TRAINING,
        "distillation": {"temperature": 1.0, "alpha": 0.9, "augment": {"tokens": tokens}},
        "baseline": True, **extra,
    })  # fmt: skip


# TokenNoise ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return bert_tokenizer(tmp_path_factory.mktemp("tok"))


def batch_of(tokenizer: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def test_noise_replaces_only_real_ordinary_tokens_at_about_the_share(tokenizer: Any) -> None:
    texts = ["the movie was good and the plot was not bad"] * 60 + ["a dish"] * 60
    batch = batch_of(tokenizer, texts)
    noise = TokenNoise(0.3, tokenizer, len(tokenizer), seed=0)
    out = noise(batch)
    ids, new = batch["input_ids"], out["input_ids"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    real = batch["attention_mask"].bool()
    changed = new != ids
    assert not (changed & (special | ~real)).any()  # [CLS], [SEP], padding untouched
    assert not torch.isin(new[changed], torch.tensor(tokenizer.all_special_ids)).any()
    share = changed.sum() / (real & ~special).sum()
    assert 0.2 < float(share) < 0.35  # 0.3, less the draws that pick the same token
    assert torch.equal(out["attention_mask"], batch["attention_mask"])  # a copy, same mask
    assert torch.equal(batch["input_ids"], ids)  # the batch itself is not changed


def test_noise_draws_are_seeded_and_resume_from_their_state(tokenizer: Any) -> None:
    batch = batch_of(tokenizer, ["the song was great and the album was dull"] * 8)
    a, b = TokenNoise(0.2, tokenizer, len(tokenizer), 1), TokenNoise(0.2, tokenizer, 100, 1)
    first = a(batch)["input_ids"]
    state = a.state()
    second = a(batch)["input_ids"]
    assert not torch.equal(first, second)  # new draws each batch
    b.set_state(state)
    b.allowed = a.allowed
    assert torch.equal(b(batch)["input_ids"], second)


def test_noise_share_out_of_range_is_refused(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match=r"augment\.tokens"):
        TokenNoise(0.0, tokenizer, len(tokenizer), 0)


# Where it applies ---------------------------------------------------------------------------


def test_a_tensor_job_with_token_noise_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"augment\.tokens applies to transformer jobs"):
        JobSpec.model_validate({
            "teacher": {"file_id": "t"}, "student": {"arch": "mlp", "hidden": [8]},
            "dataset": {"file_id": "d"}, "distillation": {"augment": {"tokens": 0.2}},
        })  # fmt: skip


def test_a_transformer_job_with_mixup_is_refused_and_pointed_at_tokens() -> None:
    with pytest.raises(ValidationError, match=r"take distillation\.augment\.tokens"):
        JobSpec.model_validate({
            "teacher": {"file_id": "t"}, "student": {"arch": "from_teacher", "num_layers": 1},
            "dataset": {"file_id": "d"}, "distillation": {"augment": {"mixup": 0.4}},
        })  # fmt: skip


def test_a_causal_lm_job_with_token_noise_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="causal LM's texts are its targets"):
        spec(0.2, teacher={"file_id": "t", "task": "causal_lm"})
    # The teacher's task known only from the model ZIP: the job fails with the same sentence.
    teacher = zip_dir(gpt2_dir(tmp_path / "lm", layers=2), tmp_path / "lm.zip")
    texts = write_jsonl(tmp_path / "d.jsonl", 30, labeled=False)
    with pytest.raises(InvalidSpec, match="causal LM's texts are its targets"):
        prepare(spec(0.2, baseline=False), teacher, texts)


# Training -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("augment")
    teacher = zip_dir(bert_dir(root / "m", "sequence_classification"), root / "t.zip")
    return teacher, write_jsonl(root / "d.jsonl", 30)


def train(
    files: tuple[Path, Path],
    out: Path,
    tokens: float,
    reporter: MemoryReporter | None = None,
    checkpoint: Checkpointing | None = None,
) -> tuple[DistillResult, dict[str, torch.Tensor], MemoryReporter]:
    reporter = reporter or MemoryReporter()
    prepared = prepare(spec(tokens), *files)
    assert isinstance(prepared, HFPrepared)
    result = distill(prepared, out, reporter, checkpoint)
    return result, dict(prepared.student.state_dict()), reporter


@pytest.fixture(scope="module")
def plain(files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train(files, tmp_path_factory.mktemp("plain"), 0.0)


@pytest.fixture(scope="module")
def noised(files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train(files, tmp_path_factory.mktemp("noised"), 0.3)


def test_noised_texts_run_the_teacher_online_and_leave_the_baseline_alone(
    plain: Any, noised: Any
) -> None:
    (p_result, p_weights, p_reporter), (n_result, n_weights, n_reporter) = plain, noised
    sources = [data for kind, _, data in n_reporter.events if kind == "teacher_cache"]
    assert sources and sources[0]["source"] == "online"
    assert "augment.tokens" in sources[0]["reason"]
    plain_sources = [data for kind, _, data in p_reporter.events if kind == "teacher_cache"]
    assert plain_sources[0]["source"] != "online"  # without noise the outputs are cached
    assert any(not torch.equal(n_weights[k], v) for k, v in p_weights.items())
    # The teacher-free baseline sees the texts as they are: the same with or without noise.
    assert n_result.report["baseline"]["accuracy"] == p_result.report["baseline"]["accuracy"]
    assert n_result.report["steps"] == p_result.report["steps"]


@pytest.mark.parametrize("stop_after", [4])
def test_a_noised_job_resumes_to_the_same_weights(
    files: tuple[Path, Path], noised: Any, tmp_path: Path, stop_after: int
) -> None:
    checkpoint = Checkpointing(tmp_path / "ckpt" / "checkpoint.pt", every_steps=2)
    with pytest.raises(Cancelled):
        train(files, tmp_path / "out", 0.3, StopAt(after_polls=stop_after), checkpoint)
    _, weights, reporter = train(files, tmp_path / "out", 0.3, None, checkpoint)
    assert "resumed" in [kind for kind, _, _ in reporter.events]
    _, unbroken, _ = noised
    assert all(torch.equal(weights[k], v) for k, v in unbroken.items())


@pytest.mark.parametrize("task", ["sequence_classification", "sentence_embedding"])
@pytest.mark.parametrize("planned", [True, False])
def test_unstated_augmentation_is_the_tasks_default_with_a_planned_schedule(
    tmp_path: Path, task: str, planned: bool
) -> None:
    """The default share comes with the planned (patient) schedule it was chosen with; a
    job that states its own epochs keeps its texts as they are."""
    default = AugmentSpec().token_share(task)  # the measured default of the task's kind
    assert default > 0 and (task != "sequence_classification" or default == DEFAULT_TOKEN_SHARE)
    share = default if planned else 0.0
    teacher = zip_dir(bert_dir(tmp_path / "m", task), tmp_path / "t.zip")
    texts = write_jsonl(tmp_path / "d.jsonl", 30, labeled=task == "sequence_classification")
    # Planned: a 1 s budget caps the planned epochs (the share still comes with the plan).
    training = {"budget_seconds": 1.0, "device": "cpu"} if planned else {**TRAINING, "epochs": 1}
    bare = JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": {"arch": "from_teacher", "num_layers": 1},
        "dataset": {"file_id": "d", "max_length": 24}, "training": training,
    })  # fmt: skip
    assert bare.distillation.augment.tokens is None
    reporter = MemoryReporter()
    prepared = prepare(bare, teacher, texts)
    assert prepared.spec.distillation.augment.tokens == share  # decided, stored with the plan
    assert (prepared.plan is not None) is planned
    distill(prepared, tmp_path / "out", reporter)
    started = next(data for kind, _, data in reporter.events if kind == "training_started")
    assert started["augment_tokens"] == share
    message = next(m for kind, m, _ in reporter.events if kind == "training_started")
    assert (f"texts augmented: {share:.0%} of their tokens replaced" in message) is (share > 0)
    source = next(data for kind, _, data in reporter.events if kind == "teacher_cache")
    assert (source["source"] == "online") is (share > 0)
    # A resume (the stored spec) decides the same.
    again = prepare(JobSpec.model_validate(prepared.spec.model_dump(mode="json")), teacher, texts)
    assert again.plan is None and again.spec.distillation.augment.tokens == share
    again.teacher.cleanup()
