"""How the engine tells the outside world what it is doing, without knowing who listens."""

from __future__ import annotations

from dataclasses import dataclass, field
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
