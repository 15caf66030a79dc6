"""Celery tasks: thin wrappers that hand a job id to the pipeline."""

from __future__ import annotations

from worker.celery_app import RUN_JOB_TASK, celery_app
from worker.pipeline import run_job as run_job_pipeline


@celery_app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> None:
    """Run one distillation job; a second delivery of the same job does nothing."""
    run_job_pipeline(job_id)
