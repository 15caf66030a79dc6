"""The models and data every training figure uses, made here from a seed (no downloads).

- `mlp`: tabular data from scikit-learn's `make_classification` (64 features, 10 classes),
  an MLP teacher (64-512-512-10) and an MLP student (64-64-10).
- `cnn`: scikit-learn's bundled 8x8 digits as (1, 8, 8) images, the README's CNN teacher
  (188k parameters) and its CNN student (channels [8, 16], hidden 32).

Teachers are trained briefly so that the accuracies printed beside the timings mean
something; the timings do not depend on it. Each workload is written as a TorchScript
teacher and an NPZ dataset, exactly what a user uploads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SEED = 0
NUM_CLASSES = 10


@dataclass
class Workload:
    name: str
    teacher_path: Path
    dataset_path: Path
    student: dict[str, Any]  # the job spec's student section
    x: torch.Tensor  # (N, *S) float32
    y: torch.Tensor  # (N,) int64
    x_val: torch.Tensor  # (M, *S)
    y_val: torch.Tensor  # (M,)
    teacher: nn.Module  # the loaded TorchScript teacher, as the engine loads it
    teacher_val_accuracy: float
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.7

    def spec(self, epochs: int | None = None, **distillation: Any) -> dict[str, Any]:
        """The job spec for this workload (file ids are placeholders: the engine is given
        paths)."""
        return {
            "teacher": {"file_id": "file_teacher"},
            "student": copy.deepcopy(self.student),
            "dataset": {"file_id": "file_dataset"},
            "distillation": {
                "temperature": self.temperature,
                "alpha": self.alpha,
                **distillation,
            },
            "training": {
                "epochs": epochs or self.epochs,
                "batch_size": self.batch_size,
                "learning_rate": self.learning_rate,
                "seed": SEED,
                "device": "cpu",
            },
        }


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
    torch.manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(128):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def tabular_arrays(n_train: int, n_val: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_train + n_val,
        n_features=64,
        n_informative=40,
        n_redundant=8,
        n_classes=NUM_CLASSES,
        n_clusters_per_class=2,
        class_sep=1.5,
        random_state=SEED,
    )
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    y = y.astype(np.int64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def mlp_teacher() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, NUM_CLASSES),
    )


def digits_arrays() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    n_val = len(x) // 5
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def cnn_teacher() -> nn.Module:
    """The README example's teacher (examples/digits/make_example.py), 188,554 parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, kernel_size=3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, NUM_CLASSES),
    )


def make(
    name: str, folder: Path, n_train: int = 8000, n_val: int = 2000, teacher_epochs: int = 3
) -> Workload:
    """Write the workload's teacher.pt and data.npz under `folder` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "mlp":
        x, y, x_val, y_val = tabular_arrays(n_train, n_val)
        teacher = mlp_teacher()
        student: dict[str, Any] = {"arch": "mlp", "hidden": [64]}
        lr = 1e-3
    elif name == "cnn":
        x, y, x_val, y_val = digits_arrays()
        teacher = cnn_teacher()
        student = {"arch": "cnn", "channels": [8, 16], "hidden": 32}
        lr = 1e-2
    else:
        raise ValueError(f"unknown workload {name!r}")
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    _fit(teacher, tx, ty, teacher_epochs, 2e-3)
    # Measured on the eager module: a first call of the TorchScript copy with another batch
    # size and autograd on would leave its profiling executor on a slower plan.
    with torch.inference_mode():
        predicted = teacher(torch.from_numpy(x_val)).argmax(dim=1).numpy()
    teacher_accuracy = float((predicted == y_val).mean())
    teacher_path = folder / f"{name}-teacher.pt"
    torch.jit.script(teacher).save(str(teacher_path))
    dataset_path = folder / f"{name}-data-{len(x)}.npz"
    np.savez(dataset_path, x=x, y=y, x_val=x_val, y_val=y_val)
    loaded = torch.jit.load(str(teacher_path), map_location="cpu")
    loaded.eval()
    return Workload(
        name=name,
        teacher_path=teacher_path,
        dataset_path=dataset_path,
        student=student,
        x=tx,
        y=ty,
        x_val=torch.from_numpy(x_val),
        y_val=torch.from_numpy(y_val),
        teacher=loaded,
        teacher_val_accuracy=teacher_accuracy,
        learning_rate=lr,
    )


def with_size(base: Workload, n_train: int, n_val: int, folder: Path) -> Workload:
    """The tabular workload with another train/validation size and the same teacher."""
    x, y, x_val, y_val = tabular_arrays(n_train, n_val)
    dataset_path = folder / f"{base.name}-data-{n_train}-{n_val}.npz"
    np.savez(dataset_path, x=x, y=y, x_val=x_val, y_val=y_val)
    return Workload(
        name=base.name,
        teacher_path=base.teacher_path,
        dataset_path=dataset_path,
        student=base.student,
        x=torch.from_numpy(x),
        y=torch.from_numpy(y),
        x_val=torch.from_numpy(x_val),
        y_val=torch.from_numpy(y_val),
        teacher=base.teacher,
        teacher_val_accuracy=base.teacher_val_accuracy,
        learning_rate=base.learning_rate,
        epochs=base.epochs,
    )
