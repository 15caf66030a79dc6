"""The default recipe, chosen by measurement (issue 3, item 6).

Three tasks with real headroom between a small student and its teacher; on each, every
candidate recipe trains the same student with the same budget and seeds, and the same
student is trained from scratch (labels only) as the baseline. The default is the recipe
with the best mean student accuracy over tasks and seeds; the table shows the gain of each
over the scratch baseline.

Run: .venv/bin/python -m bench.recipes [--quick], then .venv/bin/python -m bench.report
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits, make_classification
from torch import nn

from bench.common import Result, Table, run_section, section_parser
from worker.kd.engine import distill, prepare
from worker.kd.spec import JobSpec
from worker.kd.training.reporting import MemoryReporter

RECIPES: dict[str, dict[str, Any]] = {
    "textbook (T=4, a=0.7)": {"temperature": 4.0, "alpha": 0.7},
    "soft T=2, a=0.5": {"temperature": 2.0, "alpha": 0.5},
    "teacher only (T=4, a=1)": {"temperature": 4.0, "alpha": 1.0},
    "consistent (mixup, T=1, a=1)": {
        "temperature": 1.0, "alpha": 1.0, "augment": {"mixup": 0.4, "noise": 0.05}},
    "consistent (mixup, T=4, a=0.9)": {
        "temperature": 4.0, "alpha": 0.9, "augment": {"mixup": 0.4, "noise": 0.05}},
}  # fmt: skip


@dataclass
class Task:
    name: str
    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    teacher: Callable[[], nn.Module]
    student: dict[str, Any]
    epochs: int


def _fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=generator).split(64):
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def tasks() -> list[Task]:
    digits = load_digits()
    dx = (digits.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    dy = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(dx))
    # A small transfer set: few labelled samples is where a teacher's soft targets help most.
    dtrain, dval = order[:400], order[1000:]
    cx, cy = make_classification(
        n_samples=4000, n_features=40, n_informative=24, n_redundant=4, n_classes=10,
        n_clusters_per_class=3, class_sep=1.2, random_state=0,
    )  # fmt: skip
    cx = cx.astype(np.float32)
    cy = cy.astype(np.int64)
    sx, sy = cx[:3000], cy[:3000]  # what the teacher learned from
    tx, ty = cx[:800], cy[:800]  # the student's transfer set
    vx, vy = cx[3000:], cy[3000:]

    def digits_teacher() -> nn.Module:
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(),
            nn.Linear(128, 10),
        )  # fmt: skip
        return _fit(model, dx[order[:1000]], dy[order[:1000]], 15)

    def tabular_teacher() -> nn.Module:
        model = nn.Sequential(
            nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        return _fit(model, sx, sy, 40)

    def noisy_teacher() -> nn.Module:
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
        return _fit(model, nx[:1000], ny[:1000], 60)

    # Digits with heavy pixel noise: a harder image task for a tiny MLP student.
    noise = np.random.default_rng(1).normal(0, 0.35, size=dx.shape).astype(np.float32)
    nx, ny = np.clip(dx + noise, 0, 1).reshape(-1, 64), dy
    return [
        Task("digits, 400 labels, CNN -> MLP[16]", dx[dtrain], dy[dtrain], dx[dval], dy[dval],
             digits_teacher, {"arch": "mlp", "hidden": [16]}, 60),
        Task("tabular 10-class, 800 labels, MLP -> MLP[32]", tx, ty, vx, vy, tabular_teacher,
             {"arch": "mlp", "hidden": [32]}, 60),
        Task("noisy digits, 400 labels, MLP -> MLP[12]", nx[order[:400]], ny[order[:400]],
             nx[order[1000:]], ny[order[1000:]], noisy_teacher,
             {"arch": "mlp", "hidden": [12]}, 60),
    ]  # fmt: skip


def run_recipe(
    task: Task,
    teacher_path: Path,
    data_path: Path,
    recipe: dict[str, Any],
    seed: int,
    work: Path,
) -> dict[str, float]:
    spec = JobSpec.model_validate({
        "teacher": {"file_id": "teacher"}, "dataset": {"file_id": "data"},
        "student": task.student, "distillation": recipe,
        "training": {"epochs": task.epochs, "batch_size": 32, "learning_rate": 1e-2,
                     "seed": seed},
    })  # fmt: skip
    report = distill(prepare(spec, teacher_path, data_path), work, MemoryReporter()).report
    return {"student": report["student"]["accuracy"], "teacher": report["teacher"]["accuracy"]}


def scratch(task: Task, teacher_path: Path, data_path: Path, seed: int, work: Path) -> float:
    """The same student from scratch: cross-entropy on labels alone (alpha 0), no augment."""
    return run_recipe(task, teacher_path, data_path, {"alpha": 0.0}, seed, work)["student"]


def measure(args: argparse.Namespace) -> Result:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seeds = [0] if args.quick else [0, 1]
    started = time.monotonic()
    measured: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for t, task in enumerate(tasks()):
            if args.quick:
                task.epochs = 15
            teacher_path, data_path = root / f"teacher{t}.pt", root / f"data{t}.npz"
            torch.jit.script(task.teacher()).save(str(teacher_path))
            np.savez(data_path, x=task.x, y=task.y, x_val=task.x_val, y_val=task.y_val)
            base = [scratch(task, teacher_path, data_path, s, root / "s") for s in seeds]
            for name, recipe in RECIPES.items():
                runs = [run_recipe(task, teacher_path, data_path, recipe, s, root / "r")
                        for s in seeds]  # fmt: skip
                student = statistics.mean(r["student"] for r in runs)
                measured.append({
                    "task": task.name, "recipe": name, "teacher": runs[0]["teacher"],
                    "scratch": statistics.mean(base), "student": student,
                    "gain": student - statistics.mean(base), "seeds": len(seeds),
                })  # fmt: skip
                print(
                    f"{task.name:46s} {name:32s} student {student:.4f} "
                    f"scratch {statistics.mean(base):.4f} gain {measured[-1]['gain']:+.4f}"
                )
    means = {
        name: statistics.mean(r["student"] for r in measured if r["recipe"] == name)
        for name in RECIPES
    }
    best = max(means, key=lambda name: means[name])
    print(f"best recipe: {best} (mean student accuracy {means[best]:.4f})")
    return {
        "quick": args.quick, "seconds": time.monotonic() - started,
        "rows": measured, "mean_student": means, "best": best, "best_recipe": RECIPES[best],
    }  # fmt: skip


def rows(result: Result) -> list[Table]:
    table_rows = [
        [
            row["task"],
            row["recipe"] + (" **(default)**" if row["recipe"] == result["best"] else ""),
            f"{row['teacher']:.4f}",
            f"{row['scratch']:.4f}",
            f"{row['student']:.4f}",
            f"{row['gain']:+.4f}",
        ]
        for row in result["rows"]
    ]
    note = (
        "Mean student accuracy over the three tasks: "
        + "; ".join(f"{name} {value:.4f}" for name, value in result["mean_student"].items())
        + f".\nEach cell is the mean of {result['rows'][0]['seeds']} seeds; "
        f"{result['seconds']:.0f} s in all."
    )
    header = ["task", "recipe", "teacher", "scratch", "student", "gain"]
    return [Table(header, table_rows, note=note)]


if __name__ == "__main__":
    run_section("recipes", measure, section_parser(__doc__ or ""))
