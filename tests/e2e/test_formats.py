"""Every teacher format and dataset format, each built in the test, through the API to
`succeeded`; and a job combining response, feature and relation losses."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from tests.e2e.conftest import Api
from worker.kd.spec import CNNStudent, MLPStudent
from worker.kd.students import build_student

pytestmark = pytest.mark.e2e

FEATURES, CLASSES = 12, 3
MLP_ARCH = {"arch": "mlp", "hidden": [48]}
BATCH = torch.export.Dim("batch")


@dataclass
class Tabular:
    x: np.ndarray  # (N, 12) float32
    y: np.ndarray  # (N,) int64
    teacher: nn.Module  # eager, trained


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def tabular() -> Tabular:
    """Three gaussian blobs in 12 dimensions, and a registry MLP teacher trained on them."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2.5, size=(CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, size=600)
    x = (centers[y] + rng.normal(size=(600, FEATURES))).astype(np.float32)
    torch.manual_seed(0)
    teacher = build_student(MLPStudent.model_validate(MLP_ARCH), (FEATURES,), CLASSES)
    return Tabular(x, y.astype(np.int64), fit(teacher, torch.from_numpy(x), torch.from_numpy(y)))


def save_teacher(model: nn.Module, fmt: str, directory: Path, example: torch.Tensor) -> Path:
    if fmt == "torchscript":
        path = directory / "teacher.pt"
        torch.jit.script(model).save(str(path))
    elif fmt == "torch_export":
        path = directory / "teacher.pt2"
        program = torch.export.export(model, (example,), dynamic_shapes=({0: BATCH},))
        torch.export.save(program, str(path))
    elif fmt == "onnx":
        path = directory / "teacher.onnx"
        torch.onnx.export(
            model, (example,), str(path), dynamic_shapes=({0: BATCH},), external_data=False
        )
    else:
        path = directory / "teacher.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def run_job(api: Api, spec: dict[str, Any]) -> dict[str, Any]:
    job = api.wait(api.submit(spec)["id"], timeout=300)
    assert job["status"] == "succeeded", (job.get("error"), api.processes.logs())
    return job


def spec_for(teacher: dict[str, Any], dataset: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "teacher": teacher, "dataset": dataset,
        "student": {"arch": "mlp", "hidden": [16]},
        "training": {"epochs": 3, "batch_size": 64, "learning_rate": 0.01, "seed": 0},
        "distillation": {"temperature": 4.0, "alpha": 0.7},  # these tests are about formats
        **extra,
    }  # fmt: skip


@pytest.fixture(scope="module")
def uploaded_npz(embedded: Api, tabular: Tabular, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("npz") / "blobs.npz"
    np.savez(path, x=tabular.x, y=tabular.y)
    return str(embedded.upload(path, "dataset")["id"])


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export", "onnx", "safetensors"])
def test_each_teacher_format(
    embedded: Api, tabular: Tabular, uploaded_npz: str, tmp_path: Path, fmt: str
) -> None:
    path = save_teacher(tabular.teacher, fmt, tmp_path, torch.from_numpy(tabular.x[:4]))
    file = embedded.upload(path, "teacher")
    teacher = {"file_id": file["id"], **(MLP_ARCH if fmt == "safetensors" else {})}
    job = run_job(embedded, spec_for(teacher, {"file_id": uploaded_npz}))
    report = embedded.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["teacher"]["accuracy"] > 0.9
    assert report["student"]["accuracy"] > 0.8


def test_csv_dataset(embedded: Api, tabular: Tabular, tmp_path: Path) -> None:
    lines = [",".join([f"f{i}" for i in range(FEATURES)] + ["label"])]
    lines += [",".join([*map(str, row), str(label)]) for row, label in zip(
        tabular.x.tolist(), tabular.y.tolist(), strict=True)]  # fmt: skip
    csv_path = tmp_path / "blobs.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    dataset = embedded.upload(csv_path, "dataset")
    assert dataset["format"] == "csv"
    teacher = embedded.upload(
        save_teacher(tabular.teacher, "torchscript", tmp_path, torch.from_numpy(tabular.x[:4])),
        "teacher",
    )
    run_job(embedded, spec_for({"file_id": teacher["id"]}, {"file_id": dataset["id"]}))


def image_zip(path: Path, per_class: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 8x8 RGB images (bright top half vs bright bottom half), zipped as one
    folder per class; returns the arrays the loader will make of them."""
    rng = np.random.default_rng(1)
    xs, ys = [], []
    with zipfile.ZipFile(path, "w") as archive:
        for label, name in enumerate(("bottom", "top")):
            for i in range(per_class):
                pixels = rng.integers(0, 60, size=(8, 8, 3), dtype=np.uint8)
                rows = slice(0, 4) if name == "top" else slice(4, 8)
                pixels[rows] += 180
                buffer = io.BytesIO()
                Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
                archive.writestr(f"{name}/{i}.png", buffer.getvalue())
                xs.append(pixels.transpose(2, 0, 1).astype(np.float32) / 255.0)
                ys.append(label)
    return np.stack(xs), np.array(ys)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, nn.Module]]:
    directory = tmp_path_factory.mktemp("images")
    x, y = image_zip(directory / "images.zip")
    torch.manual_seed(0)
    cnn = CNNStudent.model_validate({"arch": "cnn", "channels": [8, 16], "hidden": 16})
    teacher = fit(build_student(cnn, (3, 8, 8), 2), torch.from_numpy(x), torch.from_numpy(y), 60)
    yield directory / "images.zip", teacher


def test_image_zip_dataset_with_a_resnet_student(
    embedded: Api, images: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    archive, teacher_model = images
    dataset = embedded.upload(archive, "dataset")
    assert dataset["format"] == "image_zip"
    teacher = embedded.upload(
        save_teacher(teacher_model, "torchscript", tmp_path, torch.zeros(2, 3, 8, 8)), "teacher"
    )
    spec = spec_for({"file_id": teacher["id"]},
                    {"file_id": dataset["id"], "image_size": [8, 8]},
                    student={"arch": "resnet", "depth": 8, "width": 4})  # fmt: skip
    spec["training"].update(epochs=15, batch_size=16)
    job = run_job(embedded, spec)
    assert job["result"]["teacher_accuracy"] > 0.9, job["result"]
    assert job["result"]["student_accuracy"] > 0.8, job["result"]


def test_builtin_digits_with_a_file_student(
    embedded: Api, digits: dict[str, Path], tmp_path: Path
) -> None:
    teacher = embedded.upload(digits["teacher"], "teacher")
    torch.manual_seed(0)
    own = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    student_path = tmp_path / "my_student.pt"
    torch.jit.script(own).save(str(student_path))
    student = embedded.upload(student_path, "student")
    spec = spec_for({"file_id": teacher["id"]}, {"builtin": "digits"},
                    student={"arch": "file", "file_id": student["id"]})  # fmt: skip
    job = run_job(embedded, spec)
    assert job["result"]["student_accuracy"] > 0.8


def test_response_feature_and_relation_losses_together(
    embedded: Api, tabular: Tabular, uploaded_npz: str, tmp_path: Path
) -> None:
    path = save_teacher(tabular.teacher, "torch_export", tmp_path, torch.from_numpy(tabular.x[:4]))
    teacher = embedded.upload(path, "teacher")
    losses = [
        {"kind": "kd", "weight": 0.6, "params": {"temperature": 4.0}},
        {"kind": "ce", "weight": 0.4},
        {"kind": "hint", "weight": 0.5, "student_layer": "1", "teacher_layer": "1"},
        {"kind": "rkd_distance", "weight": 0.5, "student_layer": "1", "teacher_layer": "1"},
    ]
    spec = spec_for({"file_id": teacher["id"]}, {"file_id": uploaded_npz},
                    distillation={"losses": losses}, baseline=True)  # fmt: skip
    job = run_job(embedded, spec)
    report = embedded.get(f"/v1/jobs/{job['id']}/report").json()
    assert [term["kind"] for term in report["recipe"]["losses"]] == [
        "kd", "ce", "hint", "rkd_distance"]  # fmt: skip
    assert report["kd_gain"] == report["student"]["accuracy"] - report["baseline"]["accuracy"]
    names = {m["name"] for m in embedded.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]}
    assert {"train_hint_epoch", "train_rkd_distance_epoch", "baseline_val_accuracy"} <= names
