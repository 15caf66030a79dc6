"""Keeps the run's metrics while passing everything on to the caller's reporter."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.kd.reporting import Reporter

METRICS_COLUMNS = ("name", "step", "epoch", "value")


@dataclass
class RecordingReporter:
    """A Reporter that forwards to `inner` and remembers every metric for metrics.csv."""

    inner: Reporter
    metrics: list[tuple[str, int, int, float]] = field(default_factory=list)
    onnx_max_abs_diff: float | None = None

    def progress(self, fraction: float, *, epoch: int, step: int) -> None:
        self.inner.progress(fraction, epoch=epoch, step=step)

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
        self.metrics.append((name, step, epoch, float(value)))
        self.inner.metric(name, value, step=step, epoch=epoch)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.inner.event(kind, message, data)

    def should_stop(self) -> bool:
        return self.inner.should_stop()

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(METRICS_COLUMNS)
            writer.writerows(self.metrics)
