"""`/v1/jobs`: submit, list, read, cancel; events, metrics, artifacts and the report."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import (
    AuthenticatedFirst,
    IdempotencyKey,
    SessionDep,
    SettingsDep,
    StorageDep,
    TenantDep,
    read,
    read_fast,
)
from app.api.downloads import DOWNLOAD_RESPONSES, stored_object
from app.api.responses import JSONBytes, LargeFileResponse, to_json
from app.errors import TooManyRequests
from app.models import Artifact
from app.queue import enqueue_job, enqueue_webhook, queue_of
from app.ratelimit import get_stream_slots
from app.schemas import (
    TERMINAL_STATUSES,
    ArtifactPublic,
    EventPublic,
    JobCreate,
    JobPublic,
    JobReport,
    JobStatus,
    ListResponse,
    MetricPublic,
    TrialPublic,
)
from app.services import jobs as service

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=AuthenticatedFirst)

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
        return service.with_waiting(session, JobPublic.model_validate(job))
    # The worker reads the job from the database: commit before the broker sees its id.
    session.commit()
    enqueue_job(job.id, queue_of(job.spec))
    return service.with_waiting(session, JobPublic.model_validate(job))


@router.get("", response_model=ListResponse[JobPublic])
async def list_jobs(
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="Last job id of the previous page.")] = None,
    status: JobStatus | None = None,
    include_trials: Annotated[
        bool, Query(description="Also list the trials of searches (jobs of their own).")
    ] = False,
) -> Response:
    """List your jobs, newest first, a page at a time."""

    def page(session: Session) -> bytes:
        rows, has_more = service.list_jobs(session, tenant.id, limit, after, status, include_trials)
        return to_json(ListResponse[JobPublic](data=rows, has_more=has_more))

    return JSONBytes(await read(page))


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, tenant: TenantDep) -> Response:
    """Read a job: status, progress, timestamps, error and result."""
    job = await read_fast(service.public_job_pg, service.public_job, tenant.id, job_id)
    if job.status == JobStatus.queued:  # why it is not starting: the workers' heartbeats
        job = await read(service.with_waiting, job)
    return JSONBytes(to_json(job))


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
async def list_events(
    job_id: str,
    request: Request,
    settings: SettingsDep,
    tenant: TenantDep,
    after: Annotated[int | None, Query(description="Last event id already seen.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> Response:
    """The job's event log in order; `Accept: text/event-stream` streams it live."""
    if "text/event-stream" in request.headers.get("accept", ""):
        await read(service.get_job, tenant.id, job_id)  # 404 before the stream starts
        slots = get_stream_slots()
        if not slots.acquire(tenant.id):
            raise TooManyRequests(
                f"You have {slots.limit} event streams open already; close one, or poll "
                "GET /v1/jobs/{id}/events?after=<last id> instead."
            )
        return StreamingResponse(
            _released(
                _stream_events(request, tenant.id, job_id, after, settings.sse_poll_seconds),
                lambda: slots.release(tenant.id),
            ),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    def page(session: Session) -> bytes:
        rows = service.list_events(
            session, service.get_job(session, tenant.id, job_id), after, limit
        )
        return to_json(
            ListResponse[EventPublic](data=[EventPublic.model_validate(e) for e in rows])
        )

    return JSONBytes(await read(page))


def _new_events(
    session: Session, tenant_id: str, job_id: str, after: int | None
) -> tuple[list[tuple[int, str, str]], str | None]:
    """(id, kind, JSON) of the events after `after`, and the job's status if it has ended."""
    job = service.get_job(session, tenant_id, job_id)
    ended = str(job.status) if job.status in TERMINAL_STATUSES else None
    events = service.list_events(session, job, after, 1000)
    return [(e.id, e.kind, EventPublic.model_validate(e).model_dump_json()) for e in events], ended


async def _released(stream: AsyncIterator[str], release: Callable[[], None]) -> AsyncIterator[str]:
    """`stream`, calling `release` once it ends, fails or its client goes away."""
    try:
        async for chunk in stream:
            yield chunk
    finally:
        release()


async def _stream_events(
    request: Request, tenant_id: str, job_id: str, after: int | None, poll: float
) -> AsyncIterator[str]:
    """Poll the event table; send each new event; stop once the job has ended."""
    last = after
    while not await request.is_disconnected():
        events, ended = await read(_new_events, tenant_id, job_id, last)
        for event_id, kind, payload in events:
            last = event_id
            yield f"id: {event_id}\nevent: {kind}\ndata: {payload}\n\n"
        if ended and not events:
            yield f"event: end\ndata: {json.dumps({'status': ended})}\n\n"
            return
        if not events:
            await asyncio.sleep(poll)


@router.get("/{job_id}/metrics", response_model=ListResponse[MetricPublic])
async def list_metrics(
    job_id: str,
    tenant: TenantDep,
    name: Annotated[str | None, Query(description="Only this metric, e.g. train_loss.")] = None,
) -> Response:
    """The job's metric time series: `{name, step, epoch, value, ts}`."""

    def page(session: Session) -> bytes:
        rows = service.list_metrics(session, service.get_job(session, tenant.id, job_id), name)
        return to_json(
            ListResponse[MetricPublic](data=[MetricPublic.model_validate(m) for m in rows])
        )

    return JSONBytes(await read(page))


@router.get("/{job_id}/trials", response_model=ListResponse[TrialPublic])
async def list_trials(job_id: str, tenant: TenantDep) -> Response:
    """A search's trials: number, status, params, selection value, epochs run, pruned."""

    def page(session: Session) -> bytes:
        rows = service.list_trials(session, service.get_job(session, tenant.id, job_id))
        return to_json(ListResponse[TrialPublic](data=rows))

    return JSONBytes(await read(page))


@router.get("/{job_id}/artifacts", response_model=ListResponse[ArtifactPublic])
async def list_artifacts(job_id: str, tenant: TenantDep) -> Response:
    """List the files a job produced."""

    def page(session: Session) -> bytes:
        rows = service.list_artifacts(session, service.get_job(session, tenant.id, job_id))
        return to_json(
            ListResponse[ArtifactPublic](data=[ArtifactPublic.model_validate(a) for a in rows])
        )

    return JSONBytes(await read(page))


@router.get(
    "/{job_id}/artifacts/{name}", response_class=LargeFileResponse, responses=DOWNLOAD_RESPONSES
)
async def download_artifact(
    job_id: str,
    name: str,
    request: Request,
    storage: StorageDep,
    settings: SettingsDep,
    tenant: TenantDep,
) -> Response:
    """Download one artifact, e.g. `student.pt` (a redirect to the object store, or streamed)."""

    def find(session: Session) -> Artifact:
        return service.get_artifact(session, service.get_job(session, tenant.id, job_id), name)

    artifact = await read(find)
    return await stored_object(
        request, storage, settings, "artifacts", artifact.path, artifact.name, artifact.sha256
    )


@router.get("/{job_id}/report", response_model=JobReport)
async def get_report(job_id: str, storage: StorageDep, tenant: TenantDep) -> Response:
    """The comparison report: teacher vs student (same content as artifact `report.json`)."""

    def report(session: Session) -> bytes | str:
        job = service.get_job(session, tenant.id, job_id)
        if job.status != JobStatus.succeeded:
            raise service.report_missing(job)
        artifact = service.get_artifact(session, job, "report.json")
        local = storage.local_path("artifacts", artifact.path)
        return artifact.path if local is None else local.read_bytes()

    found = await read(report)
    if isinstance(found, str):  # in an object store: a network read, off the event loop
        found = await run_in_threadpool(storage.read_bytes, "artifacts", found)
    return JSONBytes(found)
