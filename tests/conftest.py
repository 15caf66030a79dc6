"""Test-wide setup: one throwaway data dir (SQLite database, SQLite broker, files) per run.

The environment is set before anything imports the app, so the module-level settings,
engine and Celery app all point at the throwaway dir. Tests isolate themselves by tenant.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_DATA_DIR = Path(tempfile.mkdtemp(prefix="distillery-test-"))
os.environ["DISTILLERY_DATA_DIR"] = str(_DATA_DIR)
for _name in ("DISTILLERY_DATABASE_URL", "DISTILLERY_BROKER_URL", "DISTILLERY_QUEUE"):
    os.environ.pop(_name, None)
