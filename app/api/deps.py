"""Shared dependencies: the database session, the artifact storage and the caller's tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import session_scope
from app.errors import TooManyRequests, Unauthorized
from app.models import Tenant
from app.ratelimit import get_limiter
from app.security import hash_key
from app.services.keys import tenant_for_key
from app.storage import Storage


async def get_session() -> AsyncIterator[Session]:
    """One session per request: committed when the handler returns, rolled back on error.

    An async dependency on purpose: its teardown (commit, close: the connection goes back
    to the pool) then runs on the event loop. A sync one needs a threadpool thread for it,
    and under load every thread can be waiting for a connection that only such a teardown
    would free: the API deadlocks (fastapi#3205; measured in BENCHMARKS.md)."""
    with session_scope() as session:
        yield session


def get_storage(settings: Annotated[Settings, Depends(get_settings)]) -> Storage:
    return Storage(settings)


SessionDep = Annotated[Session, Depends(get_session)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="Printable ASCII, at most 255 characters: a retry with the same key and "
        "body returns the original object; the same key with another body is a 409.",
    ),
]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `distillery keys create`.")


SESSION_COOKIE = "distillery_key"
CSRF_HEADER = "X-Distillery-CSRF"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _key_from_request(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> str | None:
    """The bearer key, or for the dashboard the sign-in cookie. A cookie alone never
    authorises a change: state-changing calls must also carry the CSRF header, which a
    page on another site cannot send without a CORS preflight we never grant."""
    if credentials is not None and credentials.scheme.lower() == "bearer":
        return credentials.credentials
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and (request.method in _SAFE_METHODS or request.headers.get(CSRF_HEADER)):
        return cookie
    return None


def current_tenant(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    key = _key_from_request(request, credentials)
    if key is None:
        raise Unauthorized(
            "Send your API key as 'Authorization: Bearer <key>'; "
            "create one with `distillery keys create --tenant NAME`.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    limiter = get_limiter()
    if limiter is not None:
        retry_after = limiter.hit(hash_key(key)[:32])
        if retry_after is not None:
            raise TooManyRequests(
                f"Too many requests for this API key; retry in {retry_after:.0f} s.",
                headers={"Retry-After": f"{retry_after:.0f}"},
            )
    tenant = tenant_for_key(session, key)
    if tenant is None:
        raise Unauthorized(
            "The API key is unknown or revoked.", headers={"WWW-Authenticate": "Bearer"}
        )
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]
