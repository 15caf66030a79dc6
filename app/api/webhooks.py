"""`/v1/webhook_secret`: the key that signs your webhooks."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.deps import SessionDep, TenantDep
from app.models import Tenant
from app.services.webhooks import tenant_secret

router = APIRouter(prefix="/v1", tags=["webhooks"])


class WebhookSecret(BaseModel):
    object: Literal["webhook_secret"] = "webhook_secret"
    secret: str
    signature_header: str = "Distillery-Signature"
    scheme: str = "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, '<t>.<raw body>')>"


@router.get("/webhook_secret", response_model=WebhookSecret)
def get_webhook_secret(session: SessionDep, tenant: TenantDep) -> WebhookSecret:
    """The secret your webhook receiver uses to verify `Distillery-Signature`."""
    return WebhookSecret(secret=tenant_secret(session, session.get_one(Tenant, tenant.id)))
