"""Engine and sessions. SQLite gets WAL and a busy timeout so the API and a worker can share it.

On PostgreSQL the API also keeps a small asyncpg pool for its hottest read (`read_pool`):
a query there runs on the event loop (no thread hand-off), as one prepared statement (one
round trip, no pre-ping), with asyncpg's protocol parser in C."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# As many kept connections as the API's threadpool has threads (anyio's default: 40), so
# that a burst of reads does not open and close overflow connections (each a connect and,
# on SQLite, four PRAGMAs); a little overflow beyond, so a thread running a handler never
# waits for a connection that only another request's teardown, itself waiting for a
# thread, would give back: that cycle deadlocked the API at 64 concurrent requests
# (BENCHMARKS.md). The pool opens connections only as they are needed.
POOL_SIZE, MAX_OVERFLOW = 40, 10


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=POOL_SIZE,
            max_overflow=MAX_OVERFLOW,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    if settings.sqlalchemy_url.startswith("sqlite"):
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.sqlalchemy_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error (workers and the CLI)."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# The asyncpg read pool (PostgreSQL) -----------------------------------------------------

# Query parameters of a SQLAlchemy/libpq URL that asyncpg reads itself; any other would
# reach the server as a setting (asyncpg's rule), so they are not passed on.
_ASYNCPG_PARAMS = frozenset(
    {
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "passfile",
        "krbsrvname",
        "gsslib",
    }
)


def asyncpg_connect_args(url: str) -> dict[str, Any]:
    """`asyncpg.connect`/`create_pool` keyword arguments for a SQLAlchemy PostgreSQL URL
    (`postgresql+psycopg://user:pw@host:port/db?sslmode=...`). libpq's `connect_timeout`
    becomes asyncpg's `timeout`."""
    parsed = make_url(url)
    query = dict(parsed.query)
    args: dict[str, Any] = {
        "dsn": parsed.set(
            drivername="postgresql",
            query={k: v for k, v in query.items() if k in _ASYNCPG_PARAMS},
        ).render_as_string(hide_password=False)
    }
    if "connect_timeout" in query:
        args["timeout"] = float(str(query["connect_timeout"]))
    return args


async def _init_read_connection(connection: asyncpg.Connection) -> None:
    # json columns as Python objects, as psycopg returns them (asyncpg returns text).
    await connection.set_type_codec(
        "json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def _keep(_: asyncpg.Connection) -> None:
    """A connection back in the pool as it is: reads set no session state, and asyncpg's
    default reset (RESET ALL, UNLISTEN, CLOSE ALL) would add a round trip to each read."""


async def _create_read_pool(url: str, size: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        **asyncpg_connect_args(url),
        min_size=size,  # all opened at once, before the first request needs them
        max_size=size,
        init=_init_read_connection,
        reset=_keep,
        # Reads only: a write through this pool is refused by the server.
        server_settings={
            "default_transaction_read_only": "on",
            "application_name": "distillery-api-reads",
        },
    )


# One pool per event loop: asyncpg connections belong to the loop that opened them. The
# API server has one loop; a test client may start several.
_read_pools: dict[asyncio.AbstractEventLoop, asyncio.Future[asyncpg.Pool]] = {}


@lru_cache
def read_pool_enabled() -> bool:
    settings = get_settings()
    backend = make_url(settings.sqlalchemy_url).get_backend_name()
    return settings.read_pool_size > 0 and backend == "postgresql"


async def read_pool() -> asyncpg.Pool | None:
    """This event loop's asyncpg pool, opened on first use; None unless the database is
    PostgreSQL and `read_pool_size` > 0."""
    if not read_pool_enabled():
        return None
    loop = asyncio.get_running_loop()
    pending = _read_pools.get(loop)
    if pending is None:
        for old in [old for old in _read_pools if old.is_closed()]:
            del _read_pools[old]
        settings = get_settings()
        pending = asyncio.ensure_future(
            _create_read_pool(settings.sqlalchemy_url, settings.read_pool_size)
        )
        _read_pools[loop] = pending
    try:
        return await pending
    except BaseException:
        if _read_pools.get(loop) is pending and pending.done():
            del _read_pools[loop]  # the next request tries again
        raise


async def open_read_pool() -> None:
    """Open this event loop's pool now (the API's start-up), so that the first requests
    do not wait for connections; a database not up yet is tried again on first use."""
    try:
        await read_pool()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        log.warning("PostgreSQL read pool not opened (%s); trying on first use", error)


async def close_read_pool() -> None:
    """Close this event loop's pool (the API's shutdown)."""
    pending = _read_pools.pop(asyncio.get_running_loop(), None)
    if (
        pending is not None
        and pending.done()
        and not pending.cancelled()
        and not pending.exception()
    ):
        await pending.result().close()


# A pooled connection the server has dropped (a restart, a failover, an idle timeout)
# fails on first use with one of these; SQLAlchemy's pool_pre_ping would have caught it
# with a round trip on every checkout.
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    ConnectionError,
)


async def on_read_connection(
    pool: asyncpg.Pool,
    fn: Callable[Concatenate[asyncpg.Connection, P], Awaitable[R]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """`await fn(connection, ...)` on a pooled connection. A connection found dead costs
    one retry on a fresh one: its pool's other connections are replaced as they are next
    taken, since they died too, most likely."""
    try:
        async with pool.acquire() as connection:
            return await fn(connection, *args, **kwargs)
    except _CONNECTION_LOST:
        await pool.expire_connections()
    async with pool.acquire() as connection:
        return await fn(connection, *args, **kwargs)
