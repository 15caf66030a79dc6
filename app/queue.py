"""Handing job ids to the workers, and asking whether the broker answers.

A job goes to its own queue (`resources.queue`, default `DISTILLERY_QUEUE`); file
validation and webhook deliveries go to the control queue, which every worker serves, so a
fleet of workers on special queues still validates files and sends webhooks."""

from __future__ import annotations

import logging
from typing import Any

from app.config import get_settings
from worker.celery_app import RUN_JOB_TASK, VALIDATE_FILE_TASK, WEBHOOK_TASK, celery_app

log = logging.getLogger(__name__)


def queue_of(spec: dict[str, Any]) -> str:
    """The worker queue a job's spec asks for (`resources.queue`), else the default one."""
    resources = spec.get("resources") or {}
    return str(resources.get("queue") or get_settings().queue)


def enqueue_job(job_id: str, queue: str | None = None) -> bool:
    """Send the job to its queue; the job stays `queued` in the database if this fails."""
    try:
        celery_app.send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=queue or get_settings().queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception:
        log.exception("could not enqueue job %s; it stays queued", job_id)
        return False
    return True


def enqueue_webhook(
    job_id: str, attempt: int = 1, delivery_id: str | None = None, countdown: float = 0.0
) -> bool:
    """Announce a job's end to its webhook from a worker (retries are tasks too)."""
    try:
        celery_app.send_task(
            WEBHOOK_TASK,
            args=[job_id, attempt, delivery_id],
            queue=get_settings().control_queue,
            countdown=countdown or None,
        )
    except Exception:
        log.exception("could not enqueue the webhook of job %s", job_id)
        return False
    return True


def enqueue_file_validation(file_id: str) -> bool:
    """Ask a worker to load the file for real; it stays `validating` until one does."""
    try:
        celery_app.send_task(VALIDATE_FILE_TASK, args=[file_id], queue=get_settings().control_queue)
    except Exception:
        log.exception("could not enqueue the validation of file %s", file_id)
        return False
    return True


def broker_reachable() -> bool:
    timeout = get_settings().broker_check_timeout_seconds
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception:
        return False
    return True
