"""Webhook bookkeeping: tenant secrets, and one delivery attempt recorded in the event log."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope
from app.models import Job, JobEvent, Tenant
from app.schemas import JobPublic
from app.webhooks import deliver, new_secret


def tenant_secret(session: Session, tenant: Tenant) -> str:
    """The tenant's signing secret, made on first use."""
    if tenant.webhook_secret is None:
        tenant.webhook_secret = new_secret()
        session.flush()
    return tenant.webhook_secret


def attempt_delivery(
    job_id: str, attempt: int, delivery_id: str | None, settings: Settings
) -> tuple[str, float] | None:
    """Try once; log the outcome on the job. Returns (delivery id, seconds until the next
    try) when another attempt should follow, else None."""
    delivery_id = delivery_id or f"dlv_{uuid.uuid4().hex}"
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or not job.webhook_url:
            return None
        url, event = job.webhook_url, f"job.{job.status}"
        body = JobPublic.model_validate(job).model_dump_json().encode()
        secret = tenant_secret(session, session.get_one(Tenant, job.tenant_id))
    outcome = deliver(url, secret, event, delivery_id, body, settings)
    retry = not outcome.ok and attempt < settings.webhook_max_attempts
    delay = settings.webhook_backoff_seconds * 2 ** (attempt - 1)
    if outcome.ok:
        message = f"Webhook {event} delivered to {url} ({outcome.detail}), attempt {attempt}."
    elif retry:
        message = (
            f"Webhook attempt {attempt} to {url} failed ({outcome.detail}); "
            f"retrying in {delay:g} s."
        )
    else:
        message = f"Webhook to {url} failed ({outcome.detail}); gave up after {attempt} attempts."
    data = {"url": url, "attempt": attempt, "ok": outcome.ok, "delivery": delivery_id}
    with session_scope() as session:
        session.add(JobEvent(job_id=job_id, kind="webhook", message=message, data=data))
    return (delivery_id, delay) if retry else None
