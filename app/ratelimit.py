"""Requests per API key per minute (and, for keys not yet known, per client address): a
fixed one-minute window, counted in Redis when the broker is Redis (one count across every
API process) and in this process otherwise. Also the cap on open event streams per tenant."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from functools import lru_cache
from typing import Protocol

from app.config import get_settings

WINDOW_SECONDS = 60


class RateLimiter(Protocol):
    in_memory: bool  # False: `hit` does network I/O

    def hit(self, key_id: str) -> float | None:
        """Count one request; None if allowed, else seconds until the window resets."""


class MemoryLimiter:
    in_memory = True

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = defaultdict(int)

    def hit(self, key_id: str) -> float | None:
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        with self._lock:
            if len(self._counts) > 100_000:  # forget windows that have passed
                self._counts = defaultdict(
                    int, {k: v for k, v in self._counts.items() if k[1] == window}
                )
            self._counts[(key_id, window)] += 1
            count = self._counts[(key_id, window)]
        return None if count <= self.limit else _retry_after(now)


class RedisLimiter:
    in_memory = False

    def __init__(self, url: str, limit: int) -> None:
        import redis

        self.limit = limit
        self.client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    def hit(self, key_id: str) -> float | None:
        now = time.time()
        name = f"distillery:ratelimit:{key_id}:{int(now // WINDOW_SECONDS)}"
        try:
            pipe = self.client.pipeline()
            pipe.incr(name)
            pipe.expire(name, WINDOW_SECONDS * 2)
            count = int(pipe.execute()[0])
        except Exception:  # Redis away: serve rather than refuse everyone
            return None
        return None if count <= self.limit else _retry_after(now)


class StreamSlots:
    """Open event streams per tenant in this API process, at most `limit` at once: each
    stream polls the database until its job ends, so many of them cost a core."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._open: dict[str, int] = defaultdict(int)

    def acquire(self, tenant_id: str) -> bool:
        with self._lock:
            if self._open[tenant_id] >= self.limit:
                return False
            self._open[tenant_id] += 1
            return True

    def release(self, tenant_id: str) -> None:
        with self._lock:
            self._open[tenant_id] -= 1
            if self._open[tenant_id] <= 0:
                del self._open[tenant_id]


@lru_cache
def get_stream_slots() -> StreamSlots:
    return StreamSlots(get_settings().max_event_streams)


def _retry_after(now: float) -> float:
    return max(1.0, math.ceil(WINDOW_SECONDS - now % WINDOW_SECONDS))


@lru_cache
def get_limiter() -> RateLimiter | None:
    settings = get_settings()
    if settings.rate_limit_per_minute == 0:
        return None
    if settings.celery_broker_url.startswith(("redis://", "rediss://")):
        return RedisLimiter(settings.celery_broker_url, settings.rate_limit_per_minute)
    return MemoryLimiter(settings.rate_limit_per_minute)
