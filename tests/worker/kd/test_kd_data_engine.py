"""Each dataset format through `prepare` and `distill` to a finished student."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

from worker.kd.engine import distill, prepare
from worker.kd.spec import JobSpec
from worker.kd.training.reporting import MemoryReporter

MakeSpec = Callable[..., JobSpec]
QUICK = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2}


def scripted(model: nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.5)
    torch.jit.script(model.eval()).save(str(path))
    return path


def run(spec: JobSpec, teacher: Path, dataset: Path | None, out_dir: Path) -> dict[str, Any]:
    reporter = MemoryReporter()
    prepared = prepare(spec, teacher, dataset)
    result = distill(prepared, out_dir, reporter)
    assert reporter.events[-1][0] == "training_finished"
    assert (out_dir / "student.pt").is_file()
    return result.report


def test_csv_with_class_names(make_spec: MakeSpec, tmp_path: Path) -> None:
    teacher = scripted(nn.Sequential(nn.Linear(4, 3)), tmp_path / "teacher.pt")
    rows = [f"{i % 5},{i % 3},{i % 7},{i % 2},{('ant', 'bee', 'cat')[i % 3]}" for i in range(40)]
    dataset = tmp_path / "data.csv"
    dataset.write_text("a,b,c,d,kind\n" + "\n".join(rows) + "\n")
    spec = make_spec(dataset={"file_id": "f", "label_column": "kind"}, training=QUICK)
    prepared = prepare(spec, teacher, dataset)
    assert prepared.data.class_names == ["ant", "bee", "cat"]
    report = run(spec, teacher, dataset, tmp_path / "out")
    assert (report["input_shape"], report["num_classes"]) == ([4], 3)


def test_unlabeled_image_zip_and_a_cnn(make_spec: MakeSpec, tmp_path: Path) -> None:
    conv = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    teacher = scripted(conv, tmp_path / "teacher.pt")
    dataset = tmp_path / "images.zip"
    with zipfile.ZipFile(dataset, "w") as archive:
        for i in range(12):
            buffer = io.BytesIO()
            Image.new("RGB", (10, 10), (20 * i, 255 - 20 * i, 0)).save(buffer, "PNG")
            archive.writestr(f"photos/{i}.png", buffer.getvalue())
    spec = make_spec(
        {"arch": "cnn", "channels": [4], "hidden": 8},
        dataset={"file_id": "f", "image_size": [8, 8]},
        training=QUICK,
    )
    report = run(spec, teacher, dataset, tmp_path / "out")
    assert (report["input_shape"], report["num_classes"]) == ([3, 8, 8], 2)
    assert report["validation"]["labels"] != "dataset"


@pytest.mark.parametrize("grayscale", [False, True])
def test_labeled_image_zip(make_spec: MakeSpec, tmp_path: Path, grayscale: bool) -> None:
    channels = 1 if grayscale else 3
    flat = nn.Sequential(nn.Flatten(), nn.Linear(channels * 6 * 6, 2))
    teacher = scripted(flat, tmp_path / "teacher.pt")
    dataset = tmp_path / "images.zip"
    with zipfile.ZipFile(dataset, "w") as archive:
        for label, color in enumerate(((250, 10, 10), (10, 10, 250))):
            for i in range(6):
                buffer = io.BytesIO()
                Image.new("RGB", (7, 9), color).save(buffer, "JPEG")
                archive.writestr(f"set/class{label}/{i}.jpg", buffer.getvalue())
    dataset_spec = {"file_id": "f", "image_size": [6, 6], "grayscale": grayscale}
    spec = make_spec(dataset=dataset_spec, training=QUICK)
    report = run(spec, teacher, dataset, tmp_path / "out")
    assert (report["input_shape"], report["validation"]["labels"]) == ([channels, 6, 6], "dataset")


def test_digits_builtin(make_spec: MakeSpec, tmp_path: Path) -> None:
    teacher = scripted(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), tmp_path / "teacher.pt")
    spec = make_spec(dataset={"builtin": "digits"}, training={**QUICK, "batch_size": 256})
    report = run(spec, teacher, None, tmp_path / "out")
    assert (report["input_shape"], report["num_classes"]) == ([1, 8, 8], 10)
