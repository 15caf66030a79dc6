"""Fencing: every write of a job attempt is checked against the attempt that owns the job.

A worker cut off from the database (a network partition, a long GC pause, a suspended VM)
keeps training while its lease lapses; the sweep queues the job again and another worker
claims it with `attempt + 1`. When the first worker's link comes back it is a *stale*
attempt: its writes must change nothing. So the worker carries a `Fence` (job id and the
attempt it claimed), and each of its writes holds the fence in the same transaction:

    UPDATE jobs SET ... WHERE id = :job AND attempt = :attempt AND status IN (active)

comes first; when it matches no row the transaction writes nothing and the attempt knows it
is no longer the owner (`lost`): it stops quietly, without touching the job. The UPDATE
takes the job's row lock (PostgreSQL) or the database's write lock (SQLite) until commit,
so the sweep's take-over waits for an owner's write in flight and never interleaves with
it: there is no read-then-write window.

A hand-back (SIGTERM) gives its attempt number back, so the next claim reuses it; that is
safe because the run that hands back has stopped writing before its hand-back commits
(its loop, mirror and heartbeat are done, its working checkpoint dir removed).

On PostgreSQL, workers on other hosts want `idle_in_transaction_session_timeout` set on
the server (a few seconds): a worker cut off in the middle of a transaction would
otherwise hold the job's row lock, and stall the take-over, until TCP gives up.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from app.models import Job
from app.schemas import JobStatus

log = logging.getLogger(__name__)

ACTIVE = (JobStatus.validating, JobStatus.running, JobStatus.cancelling)


@dataclass
class Fence:
    """One attempt of one job; `lost` is set once a write of it was refused, `ended` once
    the attempt let go of the job itself (ended it, or handed it back)."""

    job_id: str
    attempt: int
    lost: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    refused: list[str] = field(default_factory=list)
    # What the attempt had to write once it was lost, and dropped unwritten, by kind.
    dropped: Counter[str] = field(default_factory=Counter)

    def owns(self) -> ColumnElement[bool]:
        """The condition that holds while this attempt owns the job."""
        return and_(
            Job.id == self.job_id, Job.attempt == self.attempt, Job.status.in_(list(ACTIVE))
        )

    def hold(
        self, db: Session | Connection, *conditions: ColumnElement[bool], **values: Any
    ) -> bool:
        """Take the fence in the current transaction, setting `values` on the job (or
        nothing); False when the attempt no longer owns the job (or `conditions` fail)."""
        result = db.execute(
            update(Job)
            .where(self.owns(), *conditions)
            .values(**(values or {"attempt": Job.attempt}))
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def refuse(self, what: str) -> None:
        """Record that a write (`what`) was refused: this attempt is stale from now on."""
        self.refused.append(what)
        if not self.lost.is_set():
            log.warning(
                "job %s: attempt %d no longer owns the job (its %s write was refused); "
                "it stops without writing",
                self.job_id,
                self.attempt,
                what,
            )
        else:
            log.warning("job %s: stale attempt %d: %s refused", self.job_id, self.attempt, what)
        self.lost.set()
