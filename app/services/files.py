"""Uploaded files: store, inspect, list, delete. Every query is scoped by tenant."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound
from app.formats import inspect_upload, sniff_format
from app.ids import new_id
from app.models import File, Job
from app.schemas import TERMINAL_STATUSES
from app.storage import Storage
from app.uploads import ReceivedFile


def create_file(
    session: Session, storage: Storage, tenant_id: str, purpose: str, received: ReceivedFile
) -> File:
    """Check the received bytes, move them into place and record the file."""
    fmt = sniff_format(received.path, received.head)
    details = inspect_upload(purpose, received.path, fmt)
    file_id = new_id("file")
    relative = storage.store_file(file_id, received.path)
    file = File(
        id=file_id,
        tenant_id=tenant_id,
        purpose=purpose,
        filename=received.filename,
        bytes=received.size,
        sha256=received.sha256,
        format=fmt,
        status="ready",
        details=details,
        path=relative,
    )
    session.add(file)
    session.flush()
    return file


def get_file(session: Session, tenant_id: str, file_id: str) -> File:
    file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant_id))
    if file is None:
        raise NotFound(f"No file {file_id!r}.")
    return file


def list_files(session: Session, tenant_id: str, purpose: str | None) -> list[File]:
    query = select(File).where(File.tenant_id == tenant_id).order_by(File.id.desc())
    if purpose:
        query = query.where(File.purpose == purpose)
    return list(session.scalars(query))


def delete_file(session: Session, storage: Storage, tenant_id: str, file_id: str) -> None:
    file = get_file(session, tenant_id, file_id)
    active = session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.status.not_in(TERMINAL_STATUSES))
    )
    for job in active:
        refs = {job.spec.get(role, {}).get("file_id") for role in ("teacher", "dataset")}
        if file_id in refs:
            raise Conflict(f"File {file_id!r} is used by job {job.id!r}, which has not finished.")
    session.delete(file)
    session.flush()
    storage.delete_file(file.path)


def file_path(storage: Storage, file: File) -> Path:
    return storage.file_path(file.path)
