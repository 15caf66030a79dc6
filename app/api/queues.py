"""`/v1/queues`: each worker queue's depth and live workers (no tenant data)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from app.api.deps import SettingsDep, TenantDep, read
from app.api.responses import JSONBytes, to_json
from app.schemas import ListResponse, QueuePublic
from app.services.queues import queue_overview

router = APIRouter(prefix="/v1/queues", tags=["queues"])


@router.get("", response_model=ListResponse[QueuePublic])
async def list_queues(settings: SettingsDep, _: TenantDep) -> Response:
    """Each queue: jobs queued and running on it (all tenants) and its live workers."""

    def page(session: Session) -> bytes:
        return to_json(ListResponse[QueuePublic](data=queue_overview(session, settings)))

    return JSONBytes(await read(page))
