"""Factories for what tests upload: datasets, teachers, and tenants with keys."""

from __future__ import annotations

import io
import pickle
import uuid
from typing import Any

import numpy as np

from app.db import session_scope
from app.services.keys import create_key


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def small_dataset(samples: int = 40, features: int = 6, classes: int = 3, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, features)).astype(np.float32)
    y = rng.integers(0, classes, size=samples)
    return npz_bytes(x=x, y=y)


def pickle_bytes(payload: object) -> bytes:
    return pickle.dumps(payload)


def new_key(tenant: str | None = None) -> str:
    with session_scope() as session:
        return create_key(session, tenant or f"tenant-{uuid.uuid4().hex[:10]}")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
