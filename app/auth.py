"""Who is calling: an API key resolved to its tenant, remembered for a few seconds.

Every authenticated request needs the key's tenant. Looking it up is a join on every call
(a quarter of a job read's server time, BENCHMARKS.md), so each API process keeps the
answer for `auth_cache_seconds` (default 10). A key revoked in this process is forgotten
at once; one revoked elsewhere (`distillery keys revoke` is another process) keeps working
on a server that saw it until the entry expires. `DISTILLERY_AUTH_CACHE_SECONDS=0` turns
the cache off.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.models import ApiKey, Tenant
from app.security import hash_key


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: the tenant an API key belongs to."""

    id: str
    name: str


class KeyCache:
    """Key hash -> Principal for `ttl` seconds, at most `max_entries` (oldest out first).
    Only keys that were found are kept: an unknown key is looked up every time."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._entries[key_hash]
                return None
            return entry[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[key_hash] = (time.monotonic() + self.ttl, principal)
            self._entries.move_to_end(key_hash)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@lru_cache
def get_key_cache() -> KeyCache:
    return KeyCache(get_settings().auth_cache_seconds)


def lookup(session: Session, key_hash: str) -> Principal | None:
    """The tenant of a live (unrevoked) key, from the database."""
    row = session.execute(
        select(Tenant.id, Tenant.name)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    ).first()
    return None if row is None else Principal(id=row.id, name=row.name)


def cached(key: str) -> tuple[str, Principal | None]:
    """(the key's hash, its principal if this process knows it)."""
    key_hash = hash_key(key)
    return key_hash, get_key_cache().get(key_hash)


def authenticate(session: Session, key: str) -> Principal | None:
    """The key's tenant, from the cache or the database (then cached)."""
    key_hash, principal = cached(key)
    if principal is None:
        principal = lookup(session, key_hash)
        if principal is not None:
            get_key_cache().put(key_hash, principal)
    return principal
