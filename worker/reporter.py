"""The engine's Reporter, writing to the database at a bounded rate."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, update

from app.db import session_scope
from app.models import Job, JobEvent, Metric
from app.schemas import JobStatus


class DatabaseReporter:
    """Buffers metrics and progress and writes them at most once per `flush_seconds`;
    events are written at once (there are few). Cancel is read at most once per
    `cancel_poll_seconds`, so a long run costs a handful of queries a second at most."""

    def __init__(self, job_id: str, flush_seconds: float, cancel_poll_seconds: float) -> None:
        self.job_id = job_id
        self.flush_seconds = flush_seconds
        self.cancel_poll_seconds = cancel_poll_seconds
        self._metrics: list[Metric] = []
        self._progress: float | None = None
        self._last_flush = time.monotonic()
        self._last_cancel_check = 0.0
        self._stop = False
        self.writes = 0

    def progress(self, fraction: float, *, epoch: int, step: int) -> None:
        self._progress = min(max(fraction, 0.0), 1.0)
        self._maybe_flush()

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
        self._metrics.append(
            Metric(job_id=self.job_id, name=name, step=step, epoch=epoch, value=float(value))
        )
        self._maybe_flush()

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.flush(event=JobEvent(job_id=self.job_id, kind=kind, message=message, data=data or {}))

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last_cancel_check >= self.cancel_poll_seconds:
            self._last_cancel_check = now
            with session_scope() as session:
                status = session.scalar(select(Job.status).where(Job.id == self.job_id))
            self._stop = status in (JobStatus.cancelling, JobStatus.cancelled)
        return self._stop

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self, event: JobEvent | None = None) -> None:
        """Write what is buffered in one transaction."""
        if not self._metrics and self._progress is None and event is None:
            return
        with session_scope() as session:
            session.add_all(self._metrics)
            if event is not None:
                session.add(event)
            if self._progress is not None:
                session.execute(
                    update(Job).where(Job.id == self.job_id).values(progress=self._progress)
                )
        self.writes += 1
        self._metrics = []
        self._progress = None
        self._last_flush = time.monotonic()
