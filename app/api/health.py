"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.db import get_engine
from app.queue import broker_reachable

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (async: a liveness probe needs no thread)."""
    return {"status": "ok"}


def _database_ok() -> bool:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


@router.get("/readyz", responses={503: {"description": "A dependency is down."}})
async def readyz() -> JSONResponse:
    """Ready to serve: the database and the broker both answer."""
    checks: dict[str, Any] = {
        "database": "ok" if await run_in_threadpool(_database_ok) else "unavailable",
        "broker": "ok" if await run_in_threadpool(broker_reachable) else "unavailable",
    }
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if ready else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)
