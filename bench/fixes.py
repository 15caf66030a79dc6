"""Prototypes of the changes BENCHMARKS.md proposes for app/ and worker/, so that each
proposal comes with a measured effect. Nothing in app/ or worker/ imports this; the
benchmarks start these entry points beside the real ones and label their figures
"prototype".

    python -m bench.fixes api --port P      app.main.app as `distillery api` serves it, plus
                                            GET /bench-fix/v1/jobs/{id}: the proposed read
                                            path (one threadpool hop, the session closed
                                            inside it, the response serialised once), and
                                            GET /bench-fix/v1/jobs/{id}/artifacts/{name}:
                                            the download with 1 MiB file chunks (Starlette's
                                            FileResponse reads 64 KiB per thread hop)
    python -m bench.fixes worker --polling-interval 0.1
                                            `distillery worker` with the kombu SQLAlchemy
                                            transport polling that often (default 1.0 s;
                                            no effect on a Redis broker)
"""

from __future__ import annotations

import argparse
from typing import Any

# At module level: FastAPI resolves the endpoints' string annotations in these globals.
from fastapi import Request, Response

FIX_PREFIX = "/bench-fix"
DOWNLOAD_CHUNK = 1024 * 1024


def _tenant_id(session: Any, key: str | None) -> str:
    from app.errors import Unauthorized
    from app.services.keys import tenant_for_key

    tenant = tenant_for_key(session, key) if key else None
    if tenant is None:
        raise Unauthorized("The API key is unknown or revoked.")
    return str(tenant.id)


def _read_job(key: str | None, job_id: str) -> bytes:
    from app.db import get_sessionmaker
    from app.schemas import JobPublic
    from app.services import jobs as service

    with get_sessionmaker()() as session:  # closed, connection returned, before we return
        job = service.get_job(session, _tenant_id(session, key), job_id)
        return JobPublic.model_validate(job).model_dump_json().encode()


def _artifact(key: str | None, job_id: str, name: str) -> tuple[str, str, str]:
    from app.config import get_settings
    from app.db import get_sessionmaker
    from app.services import jobs as service
    from app.storage import Storage

    with get_sessionmaker()() as session:
        job = service.get_job(session, _tenant_id(session, key), job_id)
        artifact = service.get_artifact(session, job, name)
        path = Storage(get_settings()).artifact_path(artifact.path)
        return str(path), artifact.name, artifact.sha256


def add_fixed_routes(app: Any) -> None:
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse
    from fastapi.routing import APIRoute

    class BigChunkFileResponse(FileResponse):
        chunk_size = DOWNLOAD_CHUNK

    def bearer(request: Request) -> str | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        return key if scheme.lower() == "bearer" else None

    async def get_job_fixed(job_id: str, request: Request) -> Response:
        body = await run_in_threadpool(_read_job, bearer(request), job_id)
        return Response(body, media_type="application/json")

    async def download_fixed(job_id: str, name: str, request: Request) -> Response:
        path, filename, sha256 = await run_in_threadpool(_artifact, bearer(request), job_id, name)
        return BigChunkFileResponse(
            path,
            filename=filename,
            media_type="application/octet-stream",
            headers={"X-Content-SHA256": sha256},
        )

    routes = [
        APIRoute(f"{FIX_PREFIX}/v1/jobs/{{job_id}}", get_job_fixed, methods=["GET"]),
        APIRoute(
            f"{FIX_PREFIX}/v1/jobs/{{job_id}}/artifacts/{{name}}", download_fixed, methods=["GET"]
        ),
    ]
    app.router.routes[:0] = routes  # ahead of the dashboard's catch-all pages


def serve_api(host: str, port: int) -> None:
    import uvicorn

    from app.main import app

    add_fixed_routes(app)
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=True)


def serve_worker(polling_interval: float) -> None:
    # kombu's SQLAlchemy transport hands every transport option it does not know to
    # create_engine, so `broker_transport_options={"polling_interval": ...}` fails there
    # (TypeError from create_engine); the transport's class attribute is what it reads.
    from kombu.transport.sqlalchemy import Transport

    from app.cli import worker

    Transport.polling_interval = polling_interval
    worker(loglevel="WARNING", quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    api = sub.add_parser("api")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, required=True)
    work = sub.add_parser("worker")
    work.add_argument("--polling-interval", type=float, default=0.1)
    args = parser.parse_args()
    if args.what == "api":
        serve_api(args.host, args.port)
    else:
        serve_worker(args.polling_interval)


if __name__ == "__main__":
    main()
