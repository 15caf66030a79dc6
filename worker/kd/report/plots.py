"""curves.png: training loss and validation accuracy over steps, the teacher as a line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt

MetricRow = tuple[str, int, int, float]  # (name, step, epoch, value)


def series(metrics: Sequence[MetricRow], name: str) -> tuple[list[int], list[float]]:
    rows = [(step, value) for metric, step, _, value in metrics if metric == name]
    return [step for step, _ in rows], [value for _, value in rows]


def plot_curves(
    path: Path,
    student: Sequence[MetricRow],
    teacher_accuracy: float,
    baseline: Sequence[MetricRow] | None = None,
) -> Path:
    """Two panels: train loss per step; validation accuracy per epoch end, with the
    teacher's accuracy as a dashed reference (and the scratch baseline where it was run)."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    steps, losses = series(student, "train_loss")
    loss_ax.plot(steps, losses, color="#1f77b4", label="student (KD)")
    if baseline:
        b_steps, b_losses = series(baseline, "train_loss")
        loss_ax.plot(b_steps, b_losses, color="#7f7f7f", label="baseline (no teacher)")
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    steps, accuracy = series(student, "val_accuracy")
    acc_ax.plot(steps, accuracy, marker="o", markersize=3, color="#1f77b4", label="student")
    if baseline:
        b_steps, b_accuracy = series(baseline, "val_accuracy")
        acc_ax.plot(
            b_steps, b_accuracy, marker="o", markersize=3, color="#7f7f7f", label="baseline"
        )
    acc_ax.axhline(
        teacher_accuracy, color="#d62728", linestyle="--", label=f"teacher {teacher_accuracy:.3f}"
    )
    acc_ax.set(title="validation accuracy", xlabel="step", ylabel="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
