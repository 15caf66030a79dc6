"""`/v1/jobs`: submit, list, read, cancel; events, metrics, artifacts and the report."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from app.api.deps import IdempotencyKey, SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.responses import LargeFileResponse
from app.db import get_sessionmaker
from app.queue import enqueue_job, enqueue_webhook
from app.schemas import (
    TERMINAL_STATUSES,
    ArtifactPublic,
    EventPublic,
    JobCreate,
    JobPublic,
    JobStatus,
    ListResponse,
    MetricPublic,
)
from app.services import jobs as service

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/event-stream": {
                "schema": {"type": "string"},
                "description": "With `Accept: text/event-stream`: one `data:` line per event, "
                "until the job ends.",
            }
        }
    }
}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def create_job(
    spec: JobCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Submit a distillation job; it is queued and runs on a worker."""
    job, created = service.create_job(session, tenant.id, spec, idempotency_key, settings)
    if not created:
        response.status_code = status.HTTP_200_OK
        return JobPublic.model_validate(job)
    # The worker reads the job from the database: commit before the broker sees its id.
    session.commit()
    enqueue_job(job.id)
    return JobPublic.model_validate(job)


@router.get("", response_model=ListResponse[JobPublic])
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="Last job id of the previous page.")] = None,
    status: JobStatus | None = None,
) -> ListResponse[JobPublic]:
    """List your jobs, newest first, a page at a time."""
    rows, has_more = service.list_jobs(session, tenant.id, limit, after, status)
    return ListResponse[JobPublic](
        data=[JobPublic.model_validate(j) for j in rows], has_more=has_more
    )


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """Read a job: status, progress, timestamps, error and result."""
    return JobPublic.model_validate(service.get_job(session, tenant.id, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """Cancel a job; a running job stops after its current training step."""
    job = service.cancel_job(session, tenant.id, job_id)
    if job.status == JobStatus.cancelled and job.webhook_url:
        session.commit()  # the worker reads the ended job; commit before it hears of it
        enqueue_webhook(job.id)
    return JobPublic.model_validate(job)


@router.get(
    "/{job_id}/events", response_model=ListResponse[EventPublic], responses=_EVENTS_RESPONSES
)
def list_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    after: Annotated[int | None, Query(description="Last event id already seen.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> ListResponse[EventPublic] | StreamingResponse:
    """The job's event log in order; `Accept: text/event-stream` streams it live."""
    job = service.get_job(session, tenant.id, job_id)
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(
            _stream_events(request, tenant.id, job.id, after, settings.sse_poll_seconds),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    rows = service.list_events(session, job, after, limit)
    return ListResponse[EventPublic](data=[EventPublic.model_validate(e) for e in rows])


async def _stream_events(
    request: Request, tenant_id: str, job_id: str, after: int | None, poll: float
) -> AsyncIterator[str]:
    """Poll the event table; send each new event; stop once the job has ended."""
    last = after
    while not await request.is_disconnected():
        with get_sessionmaker()() as session:
            job = service.get_job(session, tenant_id, job_id)
            ended = job.status in TERMINAL_STATUSES
            events = service.list_events(session, job, last, 1000)
        for event in events:
            last = event.id
            payload = EventPublic.model_validate(event).model_dump_json()
            yield f"id: {event.id}\nevent: {event.kind}\ndata: {payload}\n\n"
        if ended and not events:
            yield f"event: end\ndata: {json.dumps({'status': str(job.status)})}\n\n"
            return
        if not events:
            await asyncio.sleep(poll)


@router.get("/{job_id}/metrics", response_model=ListResponse[MetricPublic])
def list_metrics(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    name: Annotated[str | None, Query(description="Only this metric, e.g. train_loss.")] = None,
) -> ListResponse[MetricPublic]:
    """The job's metric time series: `{name, step, epoch, value, ts}`."""
    job = service.get_job(session, tenant.id, job_id)
    rows = service.list_metrics(session, job, name)
    return ListResponse[MetricPublic](data=[MetricPublic.model_validate(m) for m in rows])


@router.get("/{job_id}/artifacts", response_model=ListResponse[ArtifactPublic])
def list_artifacts(
    job_id: str, session: SessionDep, tenant: TenantDep
) -> ListResponse[ArtifactPublic]:
    """List the files a job produced."""
    job = service.get_job(session, tenant.id, job_id)
    rows = service.list_artifacts(session, job)
    return ListResponse[ArtifactPublic](data=[ArtifactPublic.model_validate(a) for a in rows])


@router.get("/{job_id}/artifacts/{name}", response_class=LargeFileResponse)
def download_artifact(
    job_id: str, name: str, session: SessionDep, storage: StorageDep, tenant: TenantDep
) -> LargeFileResponse:
    """Download one artifact, e.g. `student.pt`."""
    job = service.get_job(session, tenant.id, job_id)
    artifact = service.get_artifact(session, job, name)
    return LargeFileResponse(
        storage.artifact_path(artifact.path),
        filename=artifact.name,
        media_type="application/octet-stream",
        headers={"X-Content-SHA256": artifact.sha256},
    )


@router.get("/{job_id}/report", response_model=dict[str, Any])
def get_report(
    job_id: str, session: SessionDep, storage: StorageDep, tenant: TenantDep
) -> dict[str, Any]:
    """The comparison report: teacher vs student (same content as artifact `report.json`)."""
    job = service.get_job(session, tenant.id, job_id)
    if job.status != JobStatus.succeeded:
        raise service.report_missing(job)
    artifact = service.get_artifact(session, job, "report.json")
    report: dict[str, Any] = json.loads(storage.artifact_path(artifact.path).read_text())
    return report
