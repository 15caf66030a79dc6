"""Transformer jobs train through the one Trainer, so every training field works for them
as for tensor jobs: precision (autocast), early stopping, every schedule; augmentation,
which cannot apply to token ids, is refused when the spec is submitted (a 422)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from tests.worker.kd.hf.factories import bert_dir, write_jsonl, zip_dir
from worker.kd.engine import distill, prepare
from worker.kd.jobs import HFPrepared
from worker.kd.spec import DEFAULT_RECIPES, DEFAULT_TOKEN_SHARE, JobSpec
from worker.kd.training.reporting import MemoryReporter
from worker.kd.training.trainer import make_scheduler, steps_per_epoch


def spec(**training: Any) -> JobSpec:
    return JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": {"arch": "from_teacher", "num_layers": 2},
        "dataset": {"file_id": "d", "max_length": 16},
        "training": {"epochs": 2, "batch_size": 4, "device": "cpu", **training},
    })  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("training")
    teacher = zip_dir(bert_dir(root / "m", "sequence_classification"), root / "t.zip")
    return teacher, write_jsonl(root / "d.jsonl", 20)


def run(job: JobSpec, files: tuple[Path, Path], out: Path) -> tuple[HFPrepared, MemoryReporter]:
    prepared = prepare(job, *files)
    assert isinstance(prepared, HFPrepared)
    reporter = MemoryReporter()
    distill(prepared, out, reporter)
    return prepared, reporter


def metric(reporter: MemoryReporter, name: str) -> list[float]:
    return [value for metric_name, value, *_ in reporter.metrics if metric_name == name]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_precision_autocasts_the_students_forward(
    files: tuple[Path, Path], tmp_path: Path, precision: str
) -> None:
    prepared = prepare(spec(precision=precision, epochs=1), *files)
    assert isinstance(prepared, HFPrepared)
    seen: set[torch.dtype] = set()
    linear = next(m for m in prepared.student.modules() if isinstance(m, nn.Linear))

    def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training:  # training steps; validation runs in eval mode, uncast
            seen.add(output.dtype)

    linear.register_forward_hook(record)
    distill(prepared, tmp_path, MemoryReporter())
    assert seen == ({torch.bfloat16} if precision == "bf16" else {torch.float32})


def test_early_stopping_stops_and_keeps_the_best_epoch(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    # A learning rate too small to change a prediction: no epoch beats the first.
    job = spec(epochs=5, learning_rate=1e-12, early_stopping_patience=1)
    _, reporter = run(job, files, tmp_path)
    report = distill_report(tmp_path)
    assert report["epochs"] == 2
    stops = [data for kind, _, data in reporter.events if kind == "early_stop"]
    assert stops == [{"epoch": 2, "best_epoch": 1}]


def distill_report(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "report.json").read_text()))


@pytest.mark.parametrize("schedule", ["cosine", "warmup_cosine", "one_cycle", "constant"])
def test_every_schedule_drives_the_learning_rate(
    files: tuple[Path, Path], tmp_path: Path, schedule: str
) -> None:
    job = spec(schedule=schedule, epochs=3, learning_rate=1e-3, warmup_fraction=0.2)
    prepared, reporter = run(job, files, tmp_path)
    per_epoch = steps_per_epoch(len(prepared.train), 4)
    total = 3 * per_epoch
    reference = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=job.training.learning_rate)
    scheduler = make_scheduler(reference, prepared.spec.training, total)
    expected = []
    for step in range(1, total + 1):
        reference.step()
        scheduler.step()
        if step % per_epoch == 0:
            expected.append(scheduler.get_last_lr()[0])
    assert metric(reporter, "lr") == pytest.approx(expected)
    if schedule == "constant":
        assert set(expected) == {1e-3}
    else:
        assert len(set(expected)) == 3  # the rate moves every epoch


def test_augmentation_is_refused_for_transformer_jobs() -> None:
    with pytest.raises(ValidationError, match="flip apply to tensor_classification jobs only"):
        JobSpec.model_validate({
            "teacher": {"file_id": "t"}, "student": {"arch": "hf"}, "dataset": {"file_id": "d"},
            "distillation": {"augment": {"mixup": 0.2}},
        })  # fmt: skip


def test_each_kind_of_job_gets_its_default_recipe() -> None:
    hf = spec()
    assert not hf.distillation.augment.active  # no mixup, noise, crop or flip for texts
    assert (hf.distillation.temperature, hf.distillation.alpha) == (1.0, 0.9)
    assert DEFAULT_RECIPES["transformer"] == {"temperature": 1.0, "alpha": 0.9}
    # The texts' augmentation is the task's measured share; a causal LM's texts (its
    # targets) get none.
    augment = hf.distillation.augment
    assert augment.tokens is None
    assert augment.token_share("sequence_classification") == DEFAULT_TOKEN_SHARE == 0.3
    assert augment.token_share("sentence_embedding") == 0.15
    assert augment.token_share("causal_lm") == 0.0
    tensor = JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": {"arch": "mlp"}, "dataset": {"file_id": "d"},
    })  # fmt: skip
    assert tensor.distillation.augment.active and tensor.distillation.temperature == 4.0
    # A transformer section stating other fields (a causal LM's method) keeps the measured
    # temperature and alpha it leaves out; what it states wins.
    method = JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": {"arch": "hf"}, "dataset": {"file_id": "d"},
        "distillation": {"method": "top_k", "alpha": 0.5},
    })  # fmt: skip
    assert (method.distillation.temperature, method.distillation.alpha) == (1.0, 0.5)


def test_a_loss_for_another_task_kind_is_refused_with_the_kinds_it_applies_to() -> None:
    with pytest.raises(ValidationError, match="applies to tensor_classification jobs"):
        JobSpec.model_validate({
            "teacher": {"file_id": "t"}, "student": {"arch": "hf"}, "dataset": {"file_id": "d"},
            "distillation": {"losses": [{"kind": "rkd_distance", "teacher_layer": "a",
                                         "student_layer": "b"}]},
        })  # fmt: skip


def test_fields_of_the_other_kind_of_job_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"dataset\.image_size applies to tensor_class"):
        JobSpec.model_validate({
            "teacher": {"file_id": "t"}, "student": {"arch": "hf"},
            "dataset": {"file_id": "d", "image_size": [8, 8]},
        })  # fmt: skip
    with pytest.raises(ValidationError, match=r"dataset\.max_length applies to sequence_class"):
        JobSpec.model_validate({
            "teacher": {"file_id": "t"}, "student": {"arch": "mlp"},
            "dataset": {"file_id": "d", "max_length": 16},
        })  # fmt: skip


@pytest.mark.parametrize("arch", ["mlp", "hf"])
def test_a_stored_spec_dumped_whole_validates_again(arch: str) -> None:
    """The API stores a spec with every field; the worker validates that dump again."""
    stored = JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": {"arch": arch}, "dataset": {"file_id": "d"},
    }).model_dump(mode="json")  # fmt: skip
    assert JobSpec.model_validate(stored).model_dump(mode="json") == stored


def test_a_safetensors_teacher_with_inline_architecture_fields_validates() -> None:
    """A teacher's architecture fields are extras, not declared fields: still a valid spec."""
    spec = JobSpec.model_validate({
        "teacher": {"file_id": "t", "format": "safetensors", "arch": "mlp", "hidden": [16]},
        "student": {"arch": "mlp"}, "dataset": {"file_id": "d"},
    })  # fmt: skip
    assert JobSpec.model_validate(spec.model_dump(mode="json")).teacher.architecture() == {
        "arch": "mlp",
        "hidden": [16],
    }
