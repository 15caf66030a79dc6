"""Tenants and their API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import get_key_cache
from app.ids import new_id
from app.models import ApiKey, Tenant, utcnow
from app.security import KEY_PREFIX, generate_key, hash_key


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str) -> str:
    """Create a key for the tenant (creating the tenant if new); the plain key is returned once."""
    tenant = get_or_create_tenant(session, tenant_name)
    key = generate_key()
    session.add(
        ApiKey(
            id=new_id("key"),
            tenant_id=tenant.id,
            key_hash=hash_key(key),
            prefix=key[: len(KEY_PREFIX) + 6],
        )
    )
    session.flush()
    return key


def revoke_key(session: Session, key_or_prefix: str) -> int:
    """Revoke by full key or by its printed prefix; returns how many keys were revoked."""
    query = select(ApiKey).where(ApiKey.revoked_at.is_(None))
    if len(key_or_prefix) > 20:
        query = query.where(ApiKey.key_hash == hash_key(key_or_prefix))
    else:
        query = query.where(ApiKey.prefix == key_or_prefix)
    keys = session.scalars(query).all()
    for key in keys:
        key.revoked_at = utcnow()
    get_key_cache().clear()  # this process forgets at once; others within auth_cache_seconds
    return len(keys)
