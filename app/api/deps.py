"""Shared dependencies: the database session, the artifact storage and the caller's tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.errors import Unauthorized
from app.models import Tenant
from app.services.keys import tenant_for_key
from app.storage import Storage


def get_session() -> Iterator[Session]:
    """One session per request: committed when the handler returns, rolled back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_storage(settings: Annotated[Settings, Depends(get_settings)]) -> Storage:
    return Storage(settings)


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `distillery keys create`.")


def current_tenant(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized(
            "Send your API key as 'Authorization: Bearer <key>'; "
            "create one with `distillery keys create --tenant NAME`.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = tenant_for_key(session, credentials.credentials)
    if tenant is None:
        raise Unauthorized(
            "The API key is unknown or revoked.", headers={"WWW-Authenticate": "Bearer"}
        )
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]
