"""The engine's Reporter, writing to the database at a bounded rate."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Literal

from sqlalchemy import Connection, Insert, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from app.db import get_engine
from app.models import Job, JobEvent, Metric, utcnow
from app.schemas import JobStatus
from worker.fence import Fence

log = logging.getLogger(__name__)

StopReason = Literal["cancelled", "shutdown", "max_runtime", "lost"]


def insert_metrics(connection: Connection) -> Insert:
    """INSERT of metric points that skips a point already stored for its (job, name, step):
    a run resumed from a checkpoint replays the steps after it."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(Metric).on_conflict_do_nothing(
            constraint="uq_metrics_job_id_name_step"
        )
    return sqlite.insert(Metric).on_conflict_do_nothing()


class DatabaseReporter:
    """Buffers metrics and progress and writes them at most once per `flush_seconds`;
    events are written at once (there are few). Cancel is read at most once per
    `cancel_poll_seconds`, so a long run costs a handful of queries a second at most.

    Every write holds the attempt's fence (worker/fence.py) in its transaction: a stale
    attempt's progress, metrics and events are refused, and the loop is asked to stop.

    The loop is asked to stop for a cancel, a worker shutdown, the job's time limit or the
    loss of the job to another attempt; `stop_reason` says which."""

    def __init__(
        self,
        fence: Fence,
        flush_seconds: float,
        cancel_poll_seconds: float,
        *,
        deadline: float | None = None,
        shutdown: threading.Event | None = None,
    ) -> None:
        self.fence = fence
        self.job_id = fence.job_id
        self.flush_seconds = flush_seconds
        self.cancel_poll_seconds = cancel_poll_seconds
        self.deadline = deadline
        self.shutdown = shutdown
        self.stop_reason: StopReason | None = None
        self._metrics: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._progress: float | None = None
        self._last_flush = time.monotonic()
        self._last_cancel_check = 0.0
        self.writes = 0

    def progress(self, fraction: float, *, epoch: int, step: int) -> None:
        self._progress = min(max(fraction, 0.0), 1.0)
        self._maybe_flush()

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
        self._metrics.append(
            {
                "job_id": self.job_id,
                "name": name,
                "step": step,
                "epoch": epoch,
                "value": float(value),
                "ts": utcnow(),
            }
        )
        self._maybe_flush()

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.flush(
            event={
                "job_id": self.job_id,
                "kind": kind,
                "message": message,
                "data": data or {},
                "ts": utcnow(),
            }
        )

    def should_stop(self) -> bool:
        if self.stop_reason is None:
            self.stop_reason = self._reason()
        return self.stop_reason is not None

    def _reason(self) -> StopReason | None:
        if self.fence.lost.is_set():
            return "lost"
        if self.shutdown is not None and self.shutdown.is_set():
            return "shutdown"
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            return "max_runtime"
        if now - self._last_cancel_check >= self.cancel_poll_seconds:
            self._last_cancel_check = now
            try:
                with get_engine().connect() as connection:
                    status = connection.scalar(select(Job.status).where(Job.id == self.job_id))
            except DBAPIError:  # the database is away for a moment: ask again next poll
                log.warning("cancel check of job %s failed", self.job_id, exc_info=True)
                return None
            if status in (JobStatus.cancelling, JobStatus.cancelled):
                return "cancelled"
        return None

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self, event: dict[str, Any] | None = None) -> None:
        """Write what is buffered in one transaction: Core statements on one connection
        (an ORM session's unit of work costs more than the writes; BENCHMARKS.md, 5)."""
        if event is not None:
            self._events.append(event)
        if not self._metrics and self._progress is None and not self._events:
            return
        if self.fence.lost.is_set():  # stale: nothing of this attempt is written any more
            self.fence.dropped.update(self._counts())
            self._drop()
            return
        progress = {} if self._progress is None else {"progress": self._progress}
        try:
            with get_engine().begin() as connection:
                # The fence first: it locks the job's row until commit (worker/fence.py).
                owned = self.fence.hold(connection, **progress)
                if owned and self._events:
                    connection.execute(insert(JobEvent), self._events)
                if owned and self._metrics:  # one executemany, not an INSERT per row
                    connection.execute(insert_metrics(connection), self._metrics)
        except DBAPIError:
            # The database is restarting or unreachable: keep everything and write it with
            # the next flush, so training goes on and nothing is lost.
            log.warning("progress write of job %s failed; will retry", self.job_id, exc_info=True)
            self._last_flush = time.monotonic()
            return
        if not owned:
            self.fence.refuse(self._what())
        else:
            self.writes += 1
        self._drop()

    def _counts(self) -> dict[str, int]:
        counts = {"metric point(s)": len(self._metrics), "event(s)": len(self._events)}
        counts["progress"] = int(self._progress is not None)
        return {kind: n for kind, n in counts.items() if n}

    def _what(self) -> str:
        return ", ".join(
            kind if kind == "progress" else f"{n} {kind}" for kind, n in self._counts().items()
        )

    def _drop(self) -> None:
        self._events = []
        self._metrics = []
        self._progress = None
        self._last_flush = time.monotonic()
