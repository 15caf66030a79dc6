"""Run Alembic migrations from code (`distillery migrate`, `distillery up`, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url)
    return config


def upgrade_head() -> None:
    """Bring the configured database to the newest schema; safe to run again."""
    command.upgrade(alembic_config(), "head")
