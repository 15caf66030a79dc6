"""Response and request schemas, kept apart from the database models."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from worker.kd.report.schema import Report
from worker.kd.spec import JobSpec

# GET /v1/jobs/{id}/report: report.json as the worker wrote it (worker.kd.report.schema).
JobReport = Report

T = TypeVar("T")


class Purpose(StrEnum):
    teacher = "teacher"
    student = "student"
    dataset = "dataset"


class JobStatus(StrEnum):
    queued = "queued"
    validating = "validating"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    @field_serializer("*", when_used="json")
    def _utc(self, value: Any) -> Any:
        # SQLite returns naive datetimes; every stored time is UTC.
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class FilePublic(_Public):
    id: str
    object: Literal["file"] = "file"
    purpose: Purpose
    filename: str
    bytes: int
    sha256: str
    format: str = Field(description="What the content is, sniffed from its bytes.")
    status: str = Field(
        description="validating (a worker is loading it), ready, or invalid "
        "(details.error says why)."
    )
    details: dict[str, Any] = Field(description="What the upload check found (arrays, shapes).")
    created_at: datetime


class JobCreate(JobSpec):
    """A job spec, plus what the service does around it."""

    webhook_url: str | None = Field(
        None,
        max_length=2000,
        description="POSTed the signed job object when the job ends (see README: Webhooks).",
    )


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(_Public):
    id: str
    object: Literal["job"] = "job"
    status: JobStatus
    progress: float
    spec: dict[str, Any]
    webhook_url: str | None = None
    error: JobError | None
    result: dict[str, Any] | None
    attempt: int
    kind: Literal["job", "search", "trial"] = Field(
        "job", description="search: a job with `search`; trial: one of a search's trials."
    )
    parent_id: str | None = Field(None, description="A trial's search.")
    trial_number: int | None = None
    waiting: str | None = Field(
        None,
        description="Why a queued job is not starting, e.g. no live worker serves its queue "
        "(on GET /v1/jobs/{id}).",
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventPublic(_Public):
    id: int
    object: Literal["event"] = "event"
    kind: str
    message: str
    data: dict[str, Any]
    ts: datetime


class MetricPublic(_Public):
    name: str
    step: int
    epoch: int
    value: float
    ts: datetime


class ArtifactPublic(_Public):
    name: str
    object: Literal["artifact"] = "artifact"
    bytes: int
    sha256: str
    created_at: datetime


class TrialPublic(BaseModel):
    """One trial of a search (GET /v1/jobs/{id}/trials)."""

    number: int
    object: Literal["trial"] = "trial"
    job_id: str = Field(description="The trial's own job (listed with include_trials=true).")
    status: Literal["queued", "running", "complete", "pruned", "failed"]
    params: dict[str, Any] = Field(description="What the trial tried (worker.search_space).")
    value: float | None = Field(
        description="The selection-split metric (val accuracy): the kept student's for a "
        "complete trial, the latest epoch's otherwise."
    )
    epochs_run: int
    pruned: bool
    best: bool = Field(False, description="The trial whose student is the search's.")


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


class QueuePublic(BaseModel):
    name: str
    object: Literal["queue"] = "queue"
    queued: int = Field(0, description="Jobs waiting for a worker on this queue.")
    running: int = Field(0, description="Jobs a worker of this queue is running.")
    workers: int = Field(0, description="Live workers serving this queue (by heartbeat).")
