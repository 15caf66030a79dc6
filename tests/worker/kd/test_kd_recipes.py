"""The recipe's parts end to end: baseline and gain, teacher-output cache, combined
response + feature + relation losses, augmentation, schedules, early stopping."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from worker.kd.engine import Prepared, distill, prepare
from worker.kd.errors import Cancelled, InvalidSpec
from worker.kd.spec import JobSpec, TrainingSpec, with_training_defaults
from worker.kd.training.checkpoint import Checkpointing
from worker.kd.training.reporting import MemoryReporter
from worker.kd.training.teacher_cache import TeacherCache, TeacherOutputs
from worker.kd.training.trainer import lr_multiplier

from .conftest import job_spec
from .test_kd_checkpoint import StopAt, weights


def kinds(reporter: MemoryReporter) -> list[str]:
    return [kind for kind, _, _ in reporter.events]


def test_baseline_measures_the_gain(teacher_path: Path, digits_npz: Path, tmp_path: Path) -> None:
    spec = job_spec(training={"epochs": 4}, baseline=True)
    reporter = MemoryReporter()
    report = distill(prepare(spec, teacher_path, digits_npz), tmp_path, reporter).report
    baseline = report["baseline"]
    assert baseline is not None and 0 < baseline["accuracy"] <= 1
    assert report["kd_gain"] == report["student"]["accuracy"] - baseline["accuracy"]
    assert "baseline_started" in kinds(reporter)
    names = {name for name, *_ in reporter.metrics}
    assert {"baseline_val_accuracy", "baseline_train_loss_epoch"} <= names
    assert reporter.fractions == sorted(reporter.fractions) and reporter.fractions[-1] == 1.0
    card = (tmp_path / "README.md").read_text()
    assert f"{report['kd_gain']:+.4f}" in card


def test_no_labels_means_no_baseline_claimed(
    teacher_path: Path, write_npz: object, tmp_path: Path, digits_npz: Path
) -> None:
    import numpy as np

    with np.load(digits_npz) as data:
        x = data["x"]
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, x=x)
    spec = job_spec(training={"epochs": 1}, baseline=True)
    reporter = MemoryReporter()
    report = distill(prepare(spec, teacher_path, unlabeled), tmp_path / "o", reporter).report
    assert report["baseline"] is None and report["kd_gain"] is None
    assert "baseline_skipped" in kinds(reporter)
    assert report["verdict"]["outcome"] is None and "no labels" in report["verdict"]["reason"]


def test_teacher_outputs_are_reused_across_jobs(
    teacher_path: Path, digits_npz: Path, tmp_path: Path
) -> None:
    cache = TeacherCache(tmp_path / "cache", max_bytes=10**8)
    spec = job_spec(training={"epochs": 2})
    first, second = MemoryReporter(), MemoryReporter()
    a = distill(prepare(spec, teacher_path, digits_npz), tmp_path / "a", first, cache=cache)
    b = distill(prepare(spec, teacher_path, digits_npz), tmp_path / "b", second, cache=cache)
    messages = [m for k, m, _ in first.events + second.events if k == "teacher_cache"]
    assert "computed once" in messages[0] and "reused from an earlier job" in messages[1]
    assert a.report["student"]["accuracy"] == b.report["student"]["accuracy"]
    online = distill(
        prepare(
            job_spec(training={"epochs": 2}, distillation={"cache_teacher": False}),
            teacher_path,
            digits_npz,
        ),
        tmp_path / "c",
        MemoryReporter(),
    )
    assert abs(online.report["student"]["accuracy"] - a.report["student"]["accuracy"]) < 0.02


def test_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    import os
    import time

    entry = TeacherOutputs(torch.zeros(10, 10), {})
    probe = TeacherCache(tmp_path / "probe", max_bytes=10**6)
    probe.put("x", entry)
    size = (tmp_path / "probe" / "x.safetensors").stat().st_size
    cache = TeacherCache(tmp_path / "c", max_bytes=3 * size)
    for age, key in enumerate(("a", "b", "c")):
        assert cache.put(key, entry)
        stamp = time.time() - 100 + age
        os.utime(tmp_path / "c" / f"{key}.safetensors", (stamp, stamp))
    assert cache.get("a", []) is not None  # a becomes the most recently used
    cache.put("d", entry)  # over the cap: b, the least recently used, goes
    assert {p.stem for p in (tmp_path / "c").glob("*.safetensors")} == {"a", "c", "d"}
    assert not cache.put("huge", TeacherOutputs(torch.zeros(1000, 10), {}))


def eager_prepared(prepared: Prepared, teacher: nn.Module) -> Prepared:
    """The same job with an eager teacher (the formats that expose layers load as such)."""
    return dataclasses.replace(prepared, teacher=teacher)


def test_combined_response_feature_relation_losses(
    teacher_module: nn.Module, teacher_path: Path, digits_npz: Path, tmp_path: Path
) -> None:
    spec = job_spec(
        training={"epochs": 3},
        distillation={"losses": [
            {"kind": "kd", "weight": 0.7, "params": {"temperature": 4.0}},
            {"kind": "ce", "weight": 0.3},
            {"kind": "hint", "weight": 0.5, "student_layer": "1", "teacher_layer": "1"},
            {"kind": "rkd_distance", "weight": 0.5, "student_layer": "1", "teacher_layer": "1"},
        ]},
    )  # fmt: skip
    prepared = eager_prepared(prepare(spec, teacher_path, digits_npz), teacher_module)
    reporter = MemoryReporter()
    report = distill(prepared, tmp_path, reporter).report
    assert report["student"]["accuracy"] > 0.7
    names = {name for name, *_ in reporter.metrics}
    assert {"train_kd_epoch", "train_ce_epoch", "train_hint_epoch",
            "train_rkd_distance_epoch"} <= names  # fmt: skip
    started = next(m for k, m, _ in reporter.events if k == "training_started")
    assert "0.5*hint" in started and "0.5*rkd_distance" in started


def test_unknown_layer_fails_with_the_layer_names(
    teacher_module: nn.Module, teacher_path: Path, digits_npz: Path, tmp_path: Path
) -> None:
    spec = job_spec(distillation={"losses": [
        {"kind": "hint", "student_layer": "nope", "teacher_layer": "1"}]})  # fmt: skip
    prepared = eager_prepared(prepare(spec, teacher_path, digits_npz), teacher_module)
    with pytest.raises(InvalidSpec, match=r"No layer named 'nope'.*layers are: 0, 1, 2"):
        distill(prepared, tmp_path, MemoryReporter())


def test_augmented_batches_run_the_teacher_online(
    teacher_path: Path, digits_npz: Path, tmp_path: Path
) -> None:
    spec = job_spec(training={"epochs": 2}, distillation={"augment": {"mixup": 0.4, "noise": 0.05}})
    reporter = MemoryReporter()
    report = distill(prepare(spec, teacher_path, digits_npz), tmp_path, reporter).report
    assert "teacher_cache" not in kinds(reporter)
    assert report["recipe"]["augment"]["mixup"] == 0.4
    assert report["student"]["accuracy"] > 0.5


def test_augmented_run_resumes_exactly(
    teacher_path: Path, digits_npz: Path, tmp_path: Path
) -> None:
    spec = job_spec(
        {"arch": "mlp", "hidden": [32], "dropout": 0.1},
        training={"epochs": 2},
        distillation={"augment": {"mixup": 0.4, "noise": 0.05}},
    )
    distill(prepare(spec, teacher_path, digits_npz), tmp_path / "a", MemoryReporter())
    checkpoint = Checkpointing(tmp_path / "ckpt.pt", every_steps=4)
    with pytest.raises(Cancelled):
        distill(prepare(spec, teacher_path, digits_npz), tmp_path / "b", StopAt(9), checkpoint)
    distill(prepare(spec, teacher_path, digits_npz), tmp_path / "b", MemoryReporter(), checkpoint)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_early_stopping_keeps_the_best_weights(
    teacher_path: Path, digits_npz: Path, tmp_path: Path
) -> None:
    spec = job_spec(training={"epochs": 6, "learning_rate": 1e-9, "schedule": "constant",
                              "early_stopping_patience": 1})  # fmt: skip
    reporter = MemoryReporter()
    report = distill(prepare(spec, teacher_path, digits_npz), tmp_path, reporter).report
    assert report["stopped_early"] is True
    assert report["best_epoch"] == 1 and report["epochs"] == 2
    assert "early_stop" in kinds(reporter)


def test_schedules() -> None:
    spec = with_training_defaults(TrainingSpec(schedule="warmup_cosine", warmup_fraction=0.1))
    factor = lr_multiplier(spec, 100)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(100) == pytest.approx(0.0)
    assert lr_multiplier(with_training_defaults(TrainingSpec(schedule="cosine")), 100)(
        50
    ) == pytest.approx(0.5)
    assert lr_multiplier(with_training_defaults(TrainingSpec(schedule="constant")), 100)(77) == 1.0
    assert math.isclose(lr_multiplier(spec, 100)(55), 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_one_cycle_and_top5_and_batch64_latency(
    teacher_path: Path, digits_npz: Path, tmp_path: Path
) -> None:
    spec = job_spec(training={"epochs": 2, "schedule": "one_cycle"})
    report = distill(prepare(spec, teacher_path, digits_npz), tmp_path, MemoryReporter()).report
    for model in ("teacher", "student"):
        assert 0 < report[model]["top5_accuracy"] <= 1
        assert report[model]["top5_accuracy"] >= report[model]["accuracy"]
        assert report[model]["latency_ms_batch64"] > 0 and report[model]["throughput_per_s"] > 0


def test_spec_refuses_bad_loss_terms() -> None:
    with pytest.raises(ValueError, match="unknown loss kind 'fitnet'"):
        JobSpec.model_validate({**job_spec().model_dump(), "distillation": {
            "losses": [{"kind": "fitnet"}]}})  # fmt: skip
    with pytest.raises(ValueError, match="needs both layers, or neither"):
        JobSpec.model_validate({**job_spec().model_dump(), "distillation": {
            "losses": [{"kind": "hint", "teacher_layer": "0"}]}})  # fmt: skip


def test_a_spec_without_distillation_gets_the_measured_default() -> None:
    from worker.kd.spec import DEFAULT_RECIPE

    bare = {"teacher": {"file_id": "t"}, "dataset": {"file_id": "d"}, "student": {"arch": "mlp"}}
    spec = JobSpec.model_validate(bare)
    assert spec.distillation.alpha == DEFAULT_RECIPE["alpha"]
    assert spec.distillation.augment.mixup == DEFAULT_RECIPE["augment"]["mixup"]
    stated = JobSpec.model_validate({**bare, "distillation": {"temperature": 2.0}})
    assert stated.distillation.alpha == 0.7 and not stated.distillation.augment.active


def test_the_default_recipe_is_the_measured_winner() -> None:
    """BENCHMARKS.md's table comes from bench/results/recipes.json; the default must be the
    recipe that won there."""
    import json

    from worker.kd.spec import DEFAULT_RECIPE

    results = Path(__file__).resolve().parents[3] / "bench" / "results" / "recipes.json"
    measured = json.loads(results.read_text())
    assert measured["best_recipe"] == DEFAULT_RECIPE
