"""Celery tasks: thin wrappers that hand a job id to the pipeline; and the worker's hooks."""

from __future__ import annotations

import threading
from typing import Any

from celery.signals import worker_ready, worker_shutting_down

from app.config import get_settings
from app.queue import enqueue_webhook
from app.services.webhooks import deliver_due
from worker.celery_app import RUN_JOB_TASK, VALIDATE_FILE_TASK, WEBHOOK_TASK, celery_app
from worker.file_validation import validate_file as validate_file_now
from worker.lifecycle import SHUTTING_DOWN
from worker.maintenance import start_sweeper
from worker.pipeline import worker_name
from worker.presence import start_presence
from worker.search import run_job as run_any_job

_STOP_SWEEPER = threading.Event()


@celery_app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> None:
    """Run one distillation job (or start a search, or run a search's trial); a second
    delivery of the same job does nothing."""
    run_any_job(job_id)


@celery_app.task(name=WEBHOOK_TASK, ignore_result=True)
def deliver_webhook(job_id: str, attempt: int = 1, delivery_id: str | None = None) -> None:
    """Send the job's due webhook deliveries (recorded with its end); after a failed
    attempt, come back when the next is due. The maintenance sweep sends whatever this
    misses (broker down); a claim on each delivery keeps the two from both sending it.
    `attempt` and `delivery_id` are those of older messages, and unused."""
    del attempt, delivery_id
    attempted = deliver_due(get_settings(), job_id=job_id, sender="task")
    retries = [a.retry_in for a in attempted if a.retry_in is not None]
    if retries:
        enqueue_webhook(job_id, countdown=min(retries))


@celery_app.task(name=VALIDATE_FILE_TASK, ignore_result=True)
def validate_file(file_id: str) -> None:
    """Load an uploaded file for real and record what it is (or why it is unusable)."""
    validate_file_now(file_id, get_settings())


@worker_ready.connect
def _start_maintenance(sender: Any = None, **_: Any) -> None:
    """Each worker sweeps for jobs whose worker died and for jobs whose message was lost,
    and writes heartbeats saying which queues it serves."""
    start_sweeper(get_settings(), _STOP_SWEEPER)
    consumer = getattr(sender, "task_consumer", None)
    queues = sorted({q.name for q in consumer.queues}) if consumer is not None else []
    start_presence(get_settings(), worker_name(), queues, _STOP_SWEEPER)


@worker_shutting_down.connect
def _shutting_down(**_: Any) -> None:
    """SIGTERM (a deploy): the running job checkpoints and goes back to the queue."""
    SHUTTING_DOWN.set()
    _STOP_SWEEPER.set()
