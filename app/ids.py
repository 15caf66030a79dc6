"""Public ids: a type prefix, then time-ordered hex, so ids sort by creation."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    """`job_0193f0c2a1b4e8d2c9a1f3b7`: 12 hex digits of milliseconds, 12 random."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"
