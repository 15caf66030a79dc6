"""prepare and distill end to end on digits, with a real teacher and real files."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from torch import nn

from worker.kd.datasets.splits import split_indices
from worker.kd.engine import distill, prepare
from worker.kd.errors import Cancelled, IncompatibleModels, InvalidSpec
from worker.kd.exports.tensor import load_student
from worker.kd.spec import JobSpec
from worker.kd.training.reporting import MemoryReporter

if TYPE_CHECKING:
    from conftest import Digits, Distilled

MakeSpec = Callable[..., JobSpec]
WriteNpz = Callable[..., Path]
REPORT_KEYS = {
    "schema_version", "kind", "validation", "input_shape", "num_classes", "teacher", "student",
    "agreement", "kl_teacher_student", "quality_retained", "size_reduction", "speedup",
    "device", "epochs", "steps", "train_seconds", "recipe", "baseline", "kd_gain",
    "best_epoch", "stopped_early", "speedup_batch64", "onnx_max_abs_diff", "evaluation",
    "processes",
}  # fmt: skip
MODEL_KEYS = {"accuracy", "parameters", "serialized_bytes", "latency_ms_batch1"}


def val_set(digits: Digits) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation split (carved first) as a user reproduces it from the dataset and spec."""
    _, val = split_indices(len(digits.x), 0.2, 0)
    return torch.from_numpy(digits.x[val]), torch.from_numpy(digits.y[val])


def test_prepare_loads_and_measures(
    make_spec: MakeSpec, teacher_path: Path, digits_npz: Path
) -> None:
    prepared = prepare(make_spec(), teacher_path, digits_npz)
    assert (prepared.input_shape, prepared.num_classes) == ((64,), 10)
    assert prepared.device == torch.device("cpu")
    assert prepared.data.samples == 1797  # training + selection + evaluation


def test_labels_beyond_teacher_classes(
    make_spec: MakeSpec, teacher_path: Path, digits: Digits, write_npz: WriteNpz
) -> None:
    path = write_npz(x=digits.x, y=digits.y + 3)
    with pytest.raises(IncompatibleModels, match=r"labels up to 12 .* outputs 10 logits"):
        prepare(make_spec(), teacher_path, path)


def test_cnn_student_refuses_rank_four_inputs(
    make_spec: MakeSpec, tmp_path: Path, write_npz: WriteNpz
) -> None:
    teacher = tmp_path / "flat.pt"
    torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(16, 3))).save(str(teacher))
    path = write_npz(x=np.zeros((4, 1, 1, 4, 4), dtype=np.float32))
    with pytest.raises(IncompatibleModels, match=r"cannot read samples of shape \(1, 1, 4, 4\)"):
        prepare(make_spec({"arch": "cnn"}), teacher, path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_gpu(
    make_spec: MakeSpec, teacher_path: Path, digits_npz: Path
) -> None:
    with pytest.raises(InvalidSpec, match='"cuda" but this worker has no CUDA GPU'):
        prepare(make_spec(training={"device": "cuda"}), teacher_path, digits_npz)


def test_report_has_every_field(distilled: Distilled) -> None:
    report = distilled.result.report
    assert set(report) == REPORT_KEYS
    assert set(report["teacher"]) >= MODEL_KEYS and set(report["student"]) >= MODEL_KEYS
    assert report["validation"] == {"source": "split", "samples": 359, "labels": "dataset"}
    assert (report["baseline"], report["kd_gain"]) == (None, None)
    assert report["processes"] == 1
    assert report["student"]["parameters"] < report["teacher"]["parameters"]
    assert json.loads((distilled.out_dir / "report.json").read_text()) == report
    assert set(distilled.result.artifacts) == {
        "student.pt", "student.safetensors", "config.json", "report.json", "metrics.csv",
        "curves.png", "README.md", "student.onnx",
    }  # fmt: skip


def test_student_learns_from_teacher(distilled: Distilled) -> None:
    report = distilled.result.report
    assert report["teacher"]["accuracy"] > 0.9
    assert report["student"]["accuracy"] > 0.85
    assert report["agreement"] > 0.85


def test_downloaded_student_matches_report(distilled: Distilled, digits: Digits) -> None:
    x_val, y_val = val_set(digits)
    student = torch.jit.load(str(distilled.out_dir / "student.pt"))
    student.eval()
    with torch.inference_mode():
        preds = student(x_val).argmax(dim=1)
    assert (preds == y_val).float().mean().item() == distilled.result.report["student"]["accuracy"]


def test_safetensors_and_config_rebuild_the_student(distilled: Distilled, digits: Digits) -> None:
    x_val, _ = val_set(digits)
    rebuilt = load_student(
        distilled.out_dir / "config.json", distilled.out_dir / "student.safetensors"
    )
    scripted = torch.jit.load(str(distilled.out_dir / "student.pt"))
    with torch.inference_mode():
        assert torch.equal(rebuilt(x_val), scripted(x_val))


def test_metrics_csv_holds_the_history(distilled: Distilled) -> None:
    with open(distilled.out_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["name", "step", "epoch", "value"]
    assert len(rows) == len(distilled.reporter.metrics)
    names = {row["name"] for row in rows}
    assert {"train_loss", "train_loss_epoch", "val_accuracy", "val_agreement", "lr"} <= names
    epoch_ends = [row for row in rows if row["name"] == "val_accuracy"]
    assert [int(row["epoch"]) for row in epoch_ends] == list(range(1, 9))


def test_progress_and_events(distilled: Distilled) -> None:
    fractions = distilled.reporter.fractions
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    kinds = [kind for kind, _, _ in distilled.reporter.events]
    assert kinds == ["teacher_cache", "training_started"] + ["epoch_end"] * 8 + [
        "training_finished"
    ]
    assert distilled.reporter.events[2][1].startswith("Epoch 1/8: loss ")
    assert "computed once" in distilled.reporter.events[0][1]


def test_cancel_stops_training(
    make_spec: MakeSpec, teacher_path: Path, digits_npz: Path, tmp_path: Path
) -> None:
    prepared = prepare(make_spec(), teacher_path, digits_npz)
    with pytest.raises(Cancelled):
        distill(prepared, tmp_path, MemoryReporter(stop=True))
    assert not (tmp_path / "report.json").exists()


def test_same_seed_same_result(
    distilled: Distilled,
    distill_run: Callable[..., Distilled],
    make_spec: MakeSpec,
    teacher_path: Path,
    digits_npz: Path,
    tmp_path: Path,
) -> None:
    again = distill_run(make_spec(), teacher_path, digits_npz, tmp_path, MemoryReporter()).result
    first = distilled.result.report
    for key in ("agreement", "kl_teacher_student"):
        assert again.report[key] == first[key]
    assert again.report["student"]["accuracy"] == first["student"]["accuracy"]


def test_pure_distillation_without_labels(
    distill_run: Callable[..., Distilled],
    make_spec: MakeSpec,
    teacher_path: Path,
    digits: Digits,
    write_npz: WriteNpz,
    tmp_path: Path,
) -> None:
    spec = make_spec(training={"epochs": 3})
    run = distill_run(spec, teacher_path, write_npz(x=digits.x), tmp_path, MemoryReporter())
    report = run.result.report
    assert run.prepared.data.y_train is None
    assert report["validation"]["labels"] == "teacher"
    assert report["recipe"]["labels_used"] is False
    assert report["student"]["accuracy"] == report["agreement"]
    assert "train_ce_epoch" not in {name for name, *_ in run.reporter.metrics}


def test_cnn_student_on_images_with_explicit_validation(
    distill_run: Callable[..., Distilled],
    make_spec: MakeSpec,
    teacher_module: nn.Module,
    digits: Digits,
    write_npz: WriteNpz,
    tmp_path: Path,
) -> None:
    teacher = tmp_path / "image_teacher.pt"
    torch.jit.script(nn.Sequential(nn.Flatten(), teacher_module)).save(str(teacher))
    images = digits.x.reshape(-1, 1, 8, 8)
    dataset = write_npz(
        x=images[:1400], y=digits.y[:1400], x_val=images[1400:], y_val=digits.y[1400:]
    )
    spec = make_spec({"arch": "cnn", "channels": [8], "hidden": 16}, training={"epochs": 2})
    run = distill_run(spec, teacher, dataset, tmp_path / "out", MemoryReporter())
    assert run.result.report["validation"] == {
        "source": "x_val",
        "samples": 397,
        "labels": "dataset",
    }
    assert run.result.report["input_shape"] == [1, 8, 8]
    rebuilt = load_student(
        tmp_path / "out" / "config.json", tmp_path / "out" / "student.safetensors"
    )
    assert rebuilt(torch.from_numpy(images[:2])).shape == (2, 10)


def test_model_card_and_curves_describe_the_run(tmp_path: Path) -> None:
    from worker.kd.report.plots import plot_curves
    from worker.kd.report.summary import model_card

    metrics = [("train_loss", s, 1, 1.0 / s) for s in range(1, 11)]
    metrics += [("val_accuracy", 10, 1, 0.5), ("val_accuracy", 20, 2, 0.8)]
    png = plot_curves(tmp_path / "curves.png", metrics, teacher_accuracy=0.9)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    report = {
        "teacher": {
            "accuracy": 0.9,
            "parameters": 1000,
            "serialized_bytes": 4000,
            "latency_ms_batch1": 2.0,
        },
        "student": {
            "arch": "mlp",
            "accuracy": 0.8,
            "parameters": 100,
            "serialized_bytes": 900,
            "latency_ms_batch1": 1.0,
        },
        "validation": {"source": "split", "samples": 50, "labels": "dataset"},
        "input_shape": [4],
        "num_classes": 3,
        "device": "cpu",
        "quality_retained": 0.8 / 0.9,
        "size_reduction": 0.9,
        "speedup": 2.0,
        "agreement": 0.85,
        "kd_gain": None,
        "recipe": {"loss": "hinton"},
        "epochs": 2,
        "steps": 20,
        "train_seconds": 1.5,
    }
    card = model_card(report, "teacher.pt", "data.npz")
    assert "| accuracy | 0.9000 | 0.8000 |" in card
    assert "Quality retained (student / teacher accuracy): 88.9%" in card
    assert "KD gain: not measured" in card
    assert "![training curves](curves.png)" in card
