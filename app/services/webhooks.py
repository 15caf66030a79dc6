"""Webhook bookkeeping: tenant secrets, and the delivery of each job's end announcement.

A job that ends (succeeded, failed, cancelled) with a `webhook_url` gets a row in
`webhook_deliveries`, written by `record_deliveries` in the same transaction as its end
event (the flush hook below, registered when app.services is imported), so a broker
outage at that moment loses nothing.
Senders are the Celery webhook task (sent when the job ends, when the broker answers) and
every worker's maintenance sweep (whatever is due). A sender takes a row with a guarded
update (pending, due, not held by a live claim, attempts as it read them), which sets
`claimed_until`: two senders never both send the same attempt, and one that dies
mid-send lets the claim lapse so another tries again (at least once). Each attempt, the
delivery and the giving up are events of the job: `webhook_attempt`, `webhook_delivered`,
`webhook_expired`. Failed attempts are retried with exponential backoff
(`webhook_backoff_seconds`, doubling, at most `webhook_backoff_max_seconds`) until
`webhook_max_attempts` or `webhook_expire_seconds` after the job ended.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import event as orm_event
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope
from app.models import Job, JobEvent, Tenant, WebhookDelivery, utcnow
from app.schemas import TERMINAL_STATUSES, JobPublic
from app.webhooks import deliver, new_secret

log = logging.getLogger(__name__)

PENDING, DELIVERED, EXPIRED = "pending", "delivered", "expired"


def tenant_secret(session: Session, tenant: Tenant) -> str:
    """The tenant's signing secret, made on first use."""
    if tenant.webhook_secret is None:
        tenant.webhook_secret = new_secret()
        session.flush()
    return tenant.webhook_secret


def record_deliveries(session: Session, job_ids: Iterable[str]) -> None:
    """Add a pending delivery for each ended job that has a webhook (a search's trials
    never do), once per job; called while the job's end event is being flushed."""
    pending = {obj.job_id for obj in session.new if isinstance(obj, WebhookDelivery)}
    for job_id in dict.fromkeys(job_ids):
        job = session.get(Job, job_id)
        if (
            job is None
            or not job.webhook_url
            or job.kind == "trial"
            or job.status not in TERMINAL_STATUSES
            or job_id in pending
        ):
            continue
        if session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id)):
            continue
        try:
            payload = JobPublic.model_validate(job).model_dump_json()
        except Exception:  # never let the announcement stop the job from ending
            log.exception("job %s: its webhook payload is the short form", job_id)
            payload = json.dumps({"id": job.id, "object": "job", "status": str(job.status)})
        session.add(
            WebhookDelivery(
                id=f"dlv_{uuid.uuid4().hex}",
                job_id=job_id,
                tenant_id=job.tenant_id,
                url=job.webhook_url,
                event=f"job.{job.status}",
                payload=payload,
                status=PENDING,
                attempts=0,
                next_attempt_at=utcnow(),
            )
        )
        pending.add(job_id)


@orm_event.listens_for(Session, "before_flush")
def _record_on_end_events(session: Session, _context: Any, _instances: Any) -> None:
    """A job's end event (succeeded, failed, cancelled) brings its webhook delivery into
    the same flush, whichever code path ended the job (worker, sweep, search, API)."""
    ends = [
        obj.job_id
        for obj in session.new
        if isinstance(obj, JobEvent) and obj.kind in ("succeeded", "failed", "cancelled")
    ]
    if ends:
        record_deliveries(session, ends)


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """The wait after the `attempts`-th failed attempt: doubling, capped."""
    delay = settings.webhook_backoff_seconds * 2.0 ** min(max(attempts - 1, 0), 60)
    return min(delay, settings.webhook_backoff_max_seconds)


def claim_seconds(settings: Settings) -> float:
    """How long a claim holds: longer than one attempt can take."""
    return max(settings.webhook_claim_seconds, settings.webhook_timeout_seconds + 30.0)


@dataclass
class Claimed:
    id: str
    job_id: str
    tenant_id: str
    url: str
    event: str
    payload: str
    attempt: int


@dataclass
class Attempted:
    delivery_id: str
    job_id: str
    attempt: int
    ok: bool
    retry_in: float | None  # seconds until the next attempt; None when settled


def claim(settings: Settings, delivery_id: str, attempts_seen: int) -> Claimed | None:
    """Take one due delivery for one attempt; None if another sender has it (or it is not
    due, or it settled). The guard on `attempts` makes a second taker match nothing."""
    now = utcnow()
    with session_scope() as session:
        taken = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == PENDING,
                WebhookDelivery.attempts == attempts_seen,
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
            )
            .values(
                claimed_until=now + timedelta(seconds=claim_seconds(settings)),
                attempts=attempts_seen + 1,
            )
            .execution_options(synchronize_session=False)
        )
        if not taken.rowcount:  # type: ignore[attr-defined]
            return None
        row = session.get_one(WebhookDelivery, delivery_id)
        return Claimed(
            row.id, row.job_id, row.tenant_id, row.url, row.event, row.payload, attempts_seen + 1
        )


def _event(session: Session, job_id: str, kind: str, message: str, **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, message=message, data=data))


def send(settings: Settings, claimed: Claimed, sender: str) -> Attempted:
    """One POST of a claimed delivery (signed, to the checked address), then its outcome
    on the row (guarded on the claim) and in the job's events."""
    with session_scope() as session:
        secret = tenant_secret(session, session.get_one(Tenant, claimed.tenant_id))
    outcome = deliver(
        claimed.url, secret, claimed.event, claimed.id, claimed.payload.encode(), settings
    )
    attempt, now = claimed.attempt, utcnow()
    give_up = not outcome.ok and attempt >= settings.webhook_max_attempts
    delay = None if outcome.ok or give_up else backoff_seconds(settings, attempt)
    values: dict[str, Any] = {"claimed_until": None}
    if outcome.ok:
        values |= {"status": DELIVERED, "delivered_at": now, "last_error": None}
        message = f"Webhook {claimed.event} attempt {attempt} to {claimed.url}: {outcome.detail}."
    else:
        values["last_error"] = outcome.detail
        if give_up:
            values["status"] = EXPIRED
            message = (
                f"Webhook {claimed.event} attempt {attempt} to {claimed.url} failed "
                f"({outcome.detail})."
            )
        else:
            values["next_attempt_at"] = now + timedelta(seconds=delay or 0.0)
            message = (
                f"Webhook {claimed.event} attempt {attempt} to {claimed.url} failed "
                f"({outcome.detail}); retrying in {delay:g} s."
            )
    data = {
        "delivery": claimed.id,
        "url": claimed.url,
        "attempt": attempt,
        "ok": outcome.ok,
        "status_code": outcome.status_code,
        "error": None if outcome.ok or outcome.status_code is not None else outcome.detail,
        "sender": sender,
    }
    with session_scope() as session:
        _event(session, claimed.job_id, "webhook_attempt", message, **data)
        settled = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == claimed.id,
                WebhookDelivery.status == PENDING,
                WebhookDelivery.attempts == attempt,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if not settled.rowcount:  # type: ignore[attr-defined]
            # The claim lapsed and another sender took the row: it records its own outcome.
            log.warning("webhook %s: attempt %d ended after its claim lapsed", claimed.id, attempt)
            return Attempted(claimed.id, claimed.job_id, attempt, outcome.ok, None)
        if outcome.ok:
            _event(
                session,
                claimed.job_id,
                "webhook_delivered",
                f"Webhook {claimed.event} delivered to {claimed.url} on attempt {attempt}.",
                delivery=claimed.id,
                attempts=attempt,
            )
        elif give_up:
            _event(
                session,
                claimed.job_id,
                "webhook_expired",
                f"Webhook {claimed.event} to {claimed.url} was given up after {attempt} "
                f"attempts (DISTILLERY_WEBHOOK_MAX_ATTEMPTS={settings.webhook_max_attempts}); "
                f"the last said: {outcome.detail}.",
                delivery=claimed.id,
                attempts=attempt,
                reason="max_attempts",
            )
    return Attempted(claimed.id, claimed.job_id, attempt, outcome.ok, delay)


def expire_old(settings: Settings, job_id: str | None = None) -> list[str]:
    """Pending deliveries older than `webhook_expire_seconds` (and not being sent) end
    `expired`, each with an event; returns their ids."""
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.webhook_expire_seconds)
    query = select(WebhookDelivery.id, WebhookDelivery.job_id, WebhookDelivery.attempts).where(
        WebhookDelivery.status == PENDING,
        WebhookDelivery.created_at < cutoff,
        or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
    )
    if job_id is not None:
        query = query.where(WebhookDelivery.job_id == job_id)
    expired = []
    with session_scope() as session:
        rows = session.execute(query).all()
    for delivery_id, owner, attempts in rows:
        with session_scope() as session:
            done = session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == PENDING,
                    WebhookDelivery.attempts == attempts,
                )
                .values(status=EXPIRED, claimed_until=None)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount:  # type: ignore[attr-defined]
                _event(
                    session,
                    owner,
                    "webhook_expired",
                    f"Webhook not delivered within DISTILLERY_WEBHOOK_EXPIRE_SECONDS="
                    f"{settings.webhook_expire_seconds:g} of the job's end ({attempts} "
                    "attempts); given up.",
                    delivery=delivery_id,
                    attempts=attempts,
                    reason="expired",
                )
                expired.append(delivery_id)
    return expired


def deliver_due(
    settings: Settings, *, job_id: str | None = None, sender: str = "sweep", limit: int = 50
) -> list[Attempted]:
    """Expire what is too old, then send every delivery that is due (of one job, or all,
    at most `limit`) that this sender manages to claim."""
    expire_old(settings, job_id)
    now = utcnow()
    query = select(WebhookDelivery.id, WebhookDelivery.attempts).where(
        WebhookDelivery.status == PENDING,
        WebhookDelivery.next_attempt_at <= now,
        or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
    )
    if job_id is not None:
        query = query.where(WebhookDelivery.job_id == job_id)
    with session_scope() as session:
        due = session.execute(query.order_by(WebhookDelivery.next_attempt_at).limit(limit)).all()
    attempted = []
    for delivery_id, attempts in due:
        claimed = claim(settings, delivery_id, attempts)
        if claimed is not None:
            attempted.append(send(settings, claimed, sender))
    return attempted
