"""Engine fixtures: the digits dataset, a real TorchScript teacher trained on it, and factories
for job specs and NPZ files. Expensive things are session-scoped and built once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from worker.kd.datasets.splits import split_indices
from worker.kd.engine import DistillResult, Prepared, distill, prepare
from worker.kd.spec import JobSpec
from worker.kd.training.reporting import MemoryReporter

SEED = 0
VAL_FRACTION = 0.2
FAST_TRAINING = {"epochs": 8, "batch_size": 64, "learning_rate": 1e-2, "seed": SEED}
MLP_STUDENT = {"arch": "mlp", "hidden": [64]}


@dataclass
class Digits:
    x: np.ndarray  # (N, 64) float32 in [0, 1]
    y: np.ndarray  # (N,) int64, 10 classes


@dataclass
class Distilled:
    prepared: Prepared
    result: DistillResult
    reporter: MemoryReporter
    out_dir: Path


@pytest.fixture(scope="session")
def digits() -> Digits:
    data = load_digits()
    return Digits((data.data / 16.0).astype(np.float32), data.target.astype(np.int64))


def train_teacher(digits: Digits) -> nn.Module:
    """A small MLP trained only on the engine's train split, so validation is held out."""
    train, _ = split_indices(len(digits.x), VAL_FRACTION, SEED)
    x, y = torch.from_numpy(digits.x[train]), torch.from_numpy(digits.y[train])
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def teacher_module(digits: Digits) -> nn.Module:
    return train_teacher(digits)


@pytest.fixture(scope="session")
def teacher_path(teacher_module: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.jit.script(teacher_module).save(str(path))
    return path


@pytest.fixture(scope="session")
def digits_npz(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=digits.x, y=digits.y)
    return path


@pytest.fixture
def write_npz(tmp_path: Path) -> Callable[..., Path]:
    """write_npz(x=..., y=...) -> path of a fresh .npz holding those arrays."""
    counter = iter(range(1_000_000))

    def write(**arrays: Any) -> Path:
        path = tmp_path / f"data{next(counter)}.npz"
        np.savez(path, **arrays)
        return path

    return write


def job_spec(student: dict[str, Any] | None = None, **sections: dict[str, Any]) -> JobSpec:
    """A valid spec with fast training; sections override whole spec sections."""
    raw: dict[str, Any] = {
        "teacher": {"file_id": "file_teacher"},
        "dataset": {"file_id": "file_dataset"},
        "student": student or MLP_STUDENT,
        "training": {**FAST_TRAINING, **sections.pop("training", {})},
        # The textbook recipe, stated: these tests are about the engine, not the default.
        "distillation": sections.pop("distillation", {"temperature": 4.0, "alpha": 0.7}),
        **sections,
    }
    return JobSpec.model_validate(raw)


@pytest.fixture
def make_spec() -> Callable[..., JobSpec]:
    return job_spec


def run_distill(
    spec: JobSpec, teacher: Path, dataset: Path, out_dir: Path, reporter: MemoryReporter
) -> Distilled:
    prepared = prepare(spec, teacher, dataset)
    return Distilled(prepared, distill(prepared, out_dir, reporter), reporter, out_dir)


@pytest.fixture(scope="session")
def distilled(
    teacher_path: Path, digits_npz: Path, tmp_path_factory: pytest.TempPathFactory
) -> Distilled:
    """One full MLP distillation on digits, shared by the tests that inspect its outputs."""
    out_dir = tmp_path_factory.mktemp("run")
    return run_distill(job_spec(), teacher_path, digits_npz, out_dir, MemoryReporter())


@pytest.fixture
def distill_run() -> Callable[..., Distilled]:
    return run_distill
