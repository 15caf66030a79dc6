"""Shared dependencies: the database session, the artifact storage and the caller's tenant.

Reads are `async def` routes that authenticate on the event loop (from the key cache,
app/auth.py, on most calls) and do all their database work in one `read(...)` call, which
opens a session, runs the function and closes the session before it returns: one trip to
the threadpool on PostgreSQL, none on SQLite (see `read`). The hottest read, one job, has
an asyncpg twin on PostgreSQL that needs no thread at all (`read_fast`). A sync route
with a session dependency costs five thread hand-offs per request (BENCHMARKS.md,
section 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from functools import lru_cache
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

import asyncpg
from fastapi import Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.auth import Principal, authenticate, cached
from app.config import Settings, get_settings
from app.db import get_engine, get_sessionmaker, on_read_connection, read_pool, session_scope
from app.errors import TooManyRequests, Unauthorized
from app.ratelimit import get_limiter
from app.storage import Storage, open_storage

P = ParamSpec("P")
R = TypeVar("R")


async def get_session() -> AsyncIterator[Session]:
    """One session per request: committed when the handler returns, rolled back on error.

    An async dependency on purpose: its teardown (commit, close: the connection goes back
    to the pool) then runs on the event loop. A sync one needs a threadpool thread for it,
    and under load every thread can be waiting for a connection that only such a teardown
    would free: the API deadlocks (fastapi#3205; measured in BENCHMARKS.md)."""
    with session_scope() as session:
        yield session


async def read(fn: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`fn(session, ...)` in a session of its own that is closed (its connection back in
    the pool) before this returns. For reads: nothing is committed.

    On PostgreSQL it runs in the threadpool (a network round trip must not block the event
    loop). On SQLite it runs right here: an indexed read of the local file takes ~50 us,
    WAL readers never wait for writers, and the thread hand-off costs more than the read
    (GET /v1/jobs/{id}: 1,600 -> 3,000 requests/s, BENCHMARKS.md section 2)."""

    def call() -> R:
        with get_sessionmaker()() as session:
            return fn(session, *args, **kwargs)

    if reads_inline():
        return call()
    return await run_in_threadpool(call)


async def read_fast(
    fast: Callable[Concatenate[asyncpg.Connection, P], Awaitable[R]],
    fn: Callable[Concatenate[Session, P], R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """`await fast(connection, ...)` on the asyncpg read pool when the database is
    PostgreSQL (app/db.py: on the event loop, one prepared statement, no thread hand-off,
    no pre-ping); `read(fn, ...)` otherwise. `fast` and `fn` must return the same thing
    and raise the same errors (tests/app/test_pg_reads.py holds them to it)."""
    pool = await read_pool()
    if pool is None:
        return await read(fn, *args, **kwargs)
    return await on_read_connection(pool, fast, *args, **kwargs)


@lru_cache
def reads_inline() -> bool:
    return get_engine().dialect.name == "sqlite"


# Async, though they do no I/O: FastAPI runs a sync dependency in the threadpool.
async def settings() -> Settings:
    return get_settings()


async def get_storage() -> Storage:
    return open_storage(get_settings())


SessionDep = Annotated[Session, Depends(get_session)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="Printable ASCII, at most 255 characters: a retry with the same key and "
        "body returns the original object; the same key with another body is a 409.",
    ),
]
SettingsDep = Annotated[Settings, Depends(settings)]
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


async def _rate_limit(name: str, whose: str) -> None:
    limiter = get_limiter()
    if limiter is None:
        return
    # The Redis limiter is a network round trip: off the event loop.
    retry_after = (
        limiter.hit(name) if limiter.in_memory else await run_in_threadpool(limiter.hit, name)
    )
    if retry_after is not None:
        raise TooManyRequests(
            f"Too many requests {whose}; retry in {retry_after:.0f} s.",
            headers={"Retry-After": f"{retry_after:.0f}"},
        )


async def current_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:  # AuthenticatedFirst already did it (and counted the request)
        return known
    key = _key_from_request(request, credentials)
    if key is None:
        raise Unauthorized(
            "Send your API key as 'Authorization: Bearer <key>'; "
            "create one with `distillery keys create --tenant NAME`.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key_hash, principal = cached(key)
    if principal is None:  # not cached here: ask the database (authenticate caches it)
        # Lookups are counted per client address: unknown keys cost a database query
        # each, and counting them per key would leave a counter behind for every one.
        client = request.client.host if request.client else "unknown"
        await _rate_limit(f"addr:{client}", "from this address")
        principal = await read(authenticate, key)
        if principal is None:
            raise Unauthorized(
                "The API key is unknown or revoked.", headers={"WWW-Authenticate": "Bearer"}
            )
    await _rate_limit(key_hash[:32], "for this API key")
    request.state.principal = principal
    return principal


class AuthenticatedFirst(APIRoute):
    """A route that checks the caller before FastAPI reads and parses the request body
    (it reads the body before it solves any dependency): an unknown key costs no parsing,
    and a rate-limited one is refused before it is read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            if request.method not in _SAFE_METHODS:
                await current_tenant(request, await _bearer(request))
            return await handler(request)

        return authenticated


TenantDep = Annotated[Principal, Depends(current_tenant)]
