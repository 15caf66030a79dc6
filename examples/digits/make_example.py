"""Make a ready-to-run Distillery job from scikit-learn's bundled digits data.

Trains a small CNN teacher on the 8x8 digits (seeded, CPU, well under a minute) and writes:

- ``teacher.pt``: the teacher as TorchScript (input ``(N, 1, 8, 8)`` float32 in [0, 1]),
- ``digits.npz``: ``x``, ``y`` (train) and ``x_val``, ``y_val`` (a fixed 20% held-out split),
- ``job.json``: a job spec whose file ids are placeholders to replace after upload.

Run: ``.venv/bin/python examples/digits/make_example.py [--out DIR] [--epochs N]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
VAL_FRACTION = 0.2
NUM_CLASSES = 10

JOB_SPEC: dict[str, object] = {
    "teacher": {"file_id": "<TEACHER_FILE_ID>"},
    "student": {"arch": "cnn", "channels": [8, 16], "hidden": 32},
    "dataset": {"file_id": "<DATASET_FILE_ID>"},
    "distillation": {"temperature": 4.0, "alpha": 0.7},
    "training": {"epochs": 15, "batch_size": 64, "learning_rate": 0.01, "seed": 0},
}


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as ``(N, 1, 8, 8)`` float32 in [0, 1] and int64 labels, split 80/20 (seeded)."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=VAL_FRACTION, random_state=SEED, stratify=y
    )
    return x_train, y_train, x_val, y_val


def make_teacher() -> nn.Module:
    """A small CNN, comfortably bigger than the student the job asks for."""
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(64, 64, kernel_size=3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, NUM_CLASSES),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    logits = model(torch.from_numpy(x))
    return float((logits.argmax(dim=1).numpy() == y).mean())


def train_teacher(
    x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int = 64, lr: float = 2e-3
) -> nn.Module:
    torch.manual_seed(SEED)
    model = make_teacher()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(x) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: this script's folder)",
    )
    parser.add_argument("--epochs", type=int, default=30, help="teacher epochs (default 30)")
    args = parser.parse_args(argv)

    torch.set_num_threads(min(2, torch.get_num_threads()))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    x_train, y_train, x_val, y_val = load_split()
    teacher = train_teacher(x_train, y_train, epochs=args.epochs)
    train_acc = accuracy(teacher, x_train, y_train)
    val_acc = accuracy(teacher, x_val, y_val)
    elapsed = time.perf_counter() - started

    teacher_path = out / "teacher.pt"
    dataset_path = out / "digits.npz"
    job_path = out / "job.json"
    torch.jit.script(teacher).save(str(teacher_path))
    np.savez(dataset_path, x=x_train, y=y_train, x_val=x_val, y_val=y_val)
    job_path.write_text(json.dumps(JOB_SPEC, indent=2) + "\n")

    # The saved TorchScript must agree with the model just measured.
    scripted = torch.jit.load(str(teacher_path))
    assert abs(accuracy(scripted, x_val, y_val) - val_acc) < 1e-9

    print(f"train samples: {len(x_train)}, val samples: {len(x_val)}")
    print(f"teacher train accuracy: {train_acc:.4f}")
    print(f"teacher val accuracy:   {val_acc:.4f}")
    print(f"trained in {elapsed:.1f} s ({args.epochs} epochs)")
    print(f"teacher: {teacher_path}")
    print(f"dataset: {dataset_path}")
    print(f"job:     {job_path}")


if __name__ == "__main__":
    main()
