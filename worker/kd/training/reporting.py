"""How the engine tells the outside world what it is doing, without knowing who listens:
the `Reporter` protocol, a `MemoryReporter` for library use and tests, and the
`RecordingReporter` that keeps a run's metrics for metrics.csv."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class Reporter(Protocol):
    """Receives progress, metrics and events from the training loop.

    The engine calls these often (metrics every few steps); an implementation that writes
    to a database is expected to buffer and rate-limit. `should_stop` is polled between
    steps; returning True makes the loop raise `Cancelled`.
    """

    def progress(self, fraction: float, *, epoch: int, step: int) -> None: ...

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None: ...

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None: ...

    def should_stop(self) -> bool: ...


@dataclass
class MemoryReporter:
    """Keeps everything in lists: for using the engine as a library, and in tests."""

    fractions: list[float] = field(default_factory=list)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    stop: bool = False

    def progress(self, fraction: float, *, epoch: int, step: int) -> None:
        self.fractions.append(fraction)

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
        self.metrics.append((name, value, step, epoch))

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((kind, message, data or {}))

    def should_stop(self) -> bool:
        return self.stop


METRICS_COLUMNS = ("name", "step", "epoch", "value")


@dataclass
class RecordingReporter:
    """A Reporter that forwards to `inner` and remembers every metric for metrics.csv."""

    inner: Reporter
    metrics: list[tuple[str, int, int, float]] = field(default_factory=list)
    onnx_max_abs_diff: float | None = None
    layer_pairing: list[dict[str, Any]] = field(default_factory=list)
    teacher_cache: dict[str, Any] | None = None  # the last teacher_cache event's data

    def progress(self, fraction: float, *, epoch: int, step: int) -> None:
        self.inner.progress(fraction, epoch=epoch, step=step)

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
        self.metrics.append((name, step, epoch, float(value)))
        self.inner.metric(name, value, step=step, epoch=epoch)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        if kind == "teacher_cache":
            self.teacher_cache = dict(data or {})
        self.inner.event(kind, message, data)

    def should_stop(self) -> bool:
        return self.inner.should_stop()

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(METRICS_COLUMNS)
            writer.writerows(self.metrics)
