"""`/v1/files`: upload, list, read, download and delete teacher, student and dataset files."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.api.deps import IdempotencyKey, SessionDep, SettingsDep, StorageDep, TenantDep, read
from app.api.downloads import DOWNLOAD_RESPONSES, stored_object
from app.api.responses import JSONBytes, LargeFileResponse, to_json
from app.errors import ApiError
from app.queue import enqueue_file_validation
from app.schemas import Deleted, FilePublic, ListResponse, Purpose
from app.services import files as service
from app.uploads import receive_upload

router = APIRouter(prefix="/v1/files", tags=["files"])

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": [p.value for p in Purpose]},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=FilePublic,
    openapi_extra=_UPLOAD_BODY,
)
async def upload_file(
    request: Request,
    response: Response,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> FilePublic:
    """Upload a file (multipart `file` and `purpose`); it streams in with a size cap."""
    received, fields = await receive_upload(request, storage.tmp_dir, settings.max_upload_bytes)
    try:
        purpose = _purpose(fields.get("purpose"))
        file, created = await run_in_threadpool(
            service.create_file,
            session,
            storage,
            tenant.id,
            purpose,
            received,
            idempotency_key,
            settings.tenant_quota_bytes,
        )
    finally:
        received.path.unlink(missing_ok=True)
    if not created:
        response.status_code = status.HTTP_200_OK
    elif file.status == "validating":
        session.commit()  # the worker reads the file row: commit before it hears of it
        enqueue_file_validation(file.id)
    return FilePublic.model_validate(file)


def _purpose(value: str | None) -> str:
    known = ", ".join(p.value for p in Purpose)
    if value is None:
        raise ApiError(f"Give the form field 'purpose' (one of: {known}).", code="invalid_upload")
    if value not in {p.value for p in Purpose}:
        raise ApiError(f"Unknown purpose {value!r}; use one of: {known}.", code="invalid_upload")
    return value


@router.get("", response_model=ListResponse[FilePublic])
async def list_files(
    tenant: TenantDep,
    purpose: Purpose | None = None,
    sha256: Annotated[
        str | None, Query(pattern="^[0-9a-fA-F]{64}$", description="Only files with these bytes.")
    ] = None,
) -> Response:
    """List your files, newest first."""

    def page(session: Session) -> bytes:
        rows = service.list_files(session, tenant.id, purpose.value if purpose else None, sha256)
        return to_json(ListResponse[FilePublic](data=[FilePublic.model_validate(f) for f in rows]))

    return JSONBytes(await read(page))


@router.get("/{file_id}", response_model=FilePublic)
async def get_file(file_id: str, tenant: TenantDep) -> Response:
    """Read one file's metadata."""

    def one(session: Session) -> bytes:
        return to_json(FilePublic.model_validate(service.get_file(session, tenant.id, file_id)))

    return JSONBytes(await read(one))


@router.get("/{file_id}/content", response_class=LargeFileResponse, responses=DOWNLOAD_RESPONSES)
async def download_file(
    file_id: str, request: Request, storage: StorageDep, settings: SettingsDep, tenant: TenantDep
) -> Response:
    """Download a file's bytes as uploaded (a redirect to the object store, or streamed)."""
    file = await read(service.get_file, tenant.id, file_id)
    return await stored_object(
        request, storage, settings, "files", file.path, file.filename, file.sha256
    )


@router.delete("/{file_id}", response_model=Deleted)
def delete_file(
    file_id: str, session: SessionDep, storage: StorageDep, tenant: TenantDep
) -> Deleted:
    """Delete a file no unfinished job uses."""
    service.delete_file(session, storage, tenant.id, file_id)
    return Deleted(id=file_id, object="file")
