"""Uploaded files: store, inspect, list, delete. Every query is scoped by tenant."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound, PayloadTooLarge
from app.formats import inspect_upload, sniff_format
from app.ids import new_id
from app.models import File, Job
from app.schemas import TERMINAL_STATUSES
from app.storage import Storage
from app.uploads import ReceivedFile


def create_file(
    session: Session,
    storage: Storage,
    tenant_id: str,
    purpose: str,
    received: ReceivedFile,
    idempotency_key: str | None = None,
    quota: int = 0,
) -> tuple[File, bool]:
    """Check the received bytes, move them into place and record the file; returns
    (file, created). A repeated idempotency key with the same bytes and purpose returns the
    original file; with other bytes it is a conflict."""
    if idempotency_key:
        existing = _by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return _replay(existing, received, purpose), False
    check_quota(session, tenant_id, received.size, quota)
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
        status="validating" if purpose in VALIDATED else "ready",
        details=details,
        path=relative,
        idempotency_key=idempotency_key,
    )
    session.add(file)
    try:
        session.flush()
    except IntegrityError:
        # A concurrent upload with the same key won; this request wrote nothing else.
        session.rollback()
        storage.delete_file(relative)
        existing = _by_idempotency_key(session, tenant_id, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, received, purpose), False
    return file, True


def _by_idempotency_key(session: Session, tenant_id: str, key: str) -> File | None:
    return session.scalar(
        select(File).where(File.tenant_id == tenant_id, File.idempotency_key == key)
    )


def _replay(existing: File, received: ReceivedFile, purpose: str) -> File:
    if (existing.sha256, existing.purpose) != (received.sha256, purpose):
        raise Conflict(
            "This Idempotency-Key was already used for a different upload; "
            "use a new key for a new file.",
            code="idempotency_key_reused",
        )
    return existing


# Purposes whose files a worker loads for real after upload (see worker/file_validation.py).
VALIDATED = frozenset({"teacher", "student", "dataset"})


def check_quota(session: Session, tenant_id: str, incoming: int, quota: int) -> None:
    """Refuse an upload that would take the tenant past its storage quota (0: no quota)."""
    if not quota:
        return
    used = (
        session.scalar(
            select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id)
        )
        or 0
    )
    if used + incoming > quota:
        raise PayloadTooLarge(
            f"This upload ({incoming} bytes) would take your files to {used + incoming} bytes, "
            f"over your quota of {quota} bytes; delete files you no longer need.",
            code="quota_exceeded",
        )


def get_file(session: Session, tenant_id: str, file_id: str) -> File:
    file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant_id))
    if file is None:
        raise NotFound(f"No file {file_id!r}.")
    return file


def list_files(
    session: Session, tenant_id: str, purpose: str | None, sha256: str | None = None
) -> list[File]:
    query = select(File).where(File.tenant_id == tenant_id).order_by(File.id.desc())
    if purpose:
        query = query.where(File.purpose == purpose)
    if sha256:
        query = query.where(File.sha256 == sha256.lower())
    return list(session.scalars(query))


def delete_file(session: Session, storage: Storage, tenant_id: str, file_id: str) -> None:
    file = get_file(session, tenant_id, file_id)
    active = session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.status.not_in(TERMINAL_STATUSES))
    )
    for job in active:
        refs = {job.spec.get(role, {}).get("file_id") for role in ("teacher", "dataset", "student")}
        if file_id in refs:
            raise Conflict(f"File {file_id!r} is used by job {job.id!r}, which has not finished.")
    session.delete(file)
    session.flush()
    storage.delete_file(file.path)
