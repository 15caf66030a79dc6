"""A worker's heartbeat in the database: which queues it serves, and that it is alive.

`GET /v1/queues` counts live workers from these rows, and a queued job whose queue no live
worker serves says it is waiting for one. The row goes when the worker stops cleanly; a
killed worker's row just stops being renewed."""

from __future__ import annotations

import logging
import threading

from app.config import Settings
from app.db import session_scope
from app.services.queues import forget_worker, record_heartbeat

log = logging.getLogger(__name__)


def start_presence(
    settings: Settings, name: str, queues: list[str], stop: threading.Event
) -> threading.Thread:
    """Beat every `heartbeat_seconds` until `stop` is set; then remove the row."""

    def beat() -> None:
        try:
            with session_scope() as session:
                record_heartbeat(session, name, queues)
        except Exception:  # the database may be restarting; the next beat retries
            log.warning("worker heartbeat failed", exc_info=True)

    def loop() -> None:
        beat()
        while not stop.wait(settings.heartbeat_seconds):
            beat()
        try:
            with session_scope() as session:
                forget_worker(session, name)
        except Exception:
            log.warning("could not remove this worker's heartbeat row", exc_info=True)

    thread = threading.Thread(target=loop, name="distillery-presence", daemon=True)
    thread.start()
    return thread
