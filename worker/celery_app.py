"""The Celery application, configured from Settings. Importing it never imports torch."""

from __future__ import annotations

from celery import Celery

from app.config import Settings, get_settings

RUN_JOB_TASK = "distillery.run_job"
WEBHOOK_TASK = "distillery.deliver_webhook"
VALIDATE_FILE_TASK = "distillery.validate_file"
# Longest a job may run before Redis would hand its message to another worker; the
# database claim makes a re-delivery harmless anyway.
VISIBILITY_TIMEOUT_SECONDS = 7 * 24 * 3600


def make_celery(settings: Settings) -> Celery:
    app = Celery("distillery", broker=settings.celery_broker_url, include=["worker.tasks"])
    transport_options: dict[str, object] = {}
    if settings.celery_broker_url.startswith("sqla+sqlite"):
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        # kombu's SQLAlchemy transport passes broker_transport_options to create_engine, so
        # its polling interval (1 s by default: submit-to-running 0.63 s) is set on the class.
        from kombu.transport.sqlalchemy import Transport

        Transport.polling_interval = settings.broker_poll_seconds
        # Passed to create_engine by kombu's SQLAlchemy transport: wait on SQLite locks.
        transport_options["connect_args"] = {"timeout": 30}
    else:
        transport_options["visibility_timeout"] = VISIBILITY_TIMEOUT_SECONDS
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


celery_app = make_celery(get_settings())
