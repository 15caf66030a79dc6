"""Webhooks: where a job's end is announced, how it is signed, and how delivery is tried.

A job spec may name `webhook_url`. When the job ends (succeeded, failed or cancelled) the
service POSTs the job object as JSON with these headers:

    Distillery-Event: job.succeeded
    Distillery-Delivery: <unique id of this delivery, the same across its retries>
    Distillery-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>

The secret is the tenant's (GET /v1/webhook_secret). Verify by recomputing the HMAC over
the timestamp, a dot and the raw body, comparing in constant time, and refusing old `t`.
Each delivery is recorded with the job's end and retried with backoff until delivered or
expired (app/services/webhooks.py); a receiver may see one more than once (at least
once), with the same `Distillery-Delivery`, and should ignore repeats of an id it has.
Targets that resolve to private, loopback or link-local addresses are refused unless their
host is in DISTILLERY_WEBHOOK_ALLOW_HOSTS; the delivery connects to the address that was
checked (no second lookup a rebinding DNS server could answer differently); redirects are
not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from app.config import Settings
from app.errors import Unprocessable

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, tolerance_seconds: int = 300) -> bool:
    """What a receiver does: check the signature and that it is recent."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def check_target(url: str, settings: Settings) -> str:
    """Refuse URLs a webhook must not reach (raises Unprocessable with the reason); returns
    the address that was checked, which the delivery then connects to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Unprocessable("webhook_url: give an absolute http:// or https:// URL.")
    host = parts.hostname
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Unprocessable(f"webhook_url: the host {host!r} does not resolve.") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if host not in settings.webhook_allow_hosts:
        for address in addresses:
            if not address.is_global:
                raise Unprocessable(
                    f"webhook_url: {host!r} resolves to {address}, a non-public address. Ask "
                    "the operator to add the host to DISTILLERY_WEBHOOK_ALLOW_HOSTS if it is "
                    "meant."
                )
    return str(addresses[0])


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """(the URL with its host replaced by `address`, the Host header, httpx extensions
    naming the host for TLS): the connection goes to the address that was checked, not
    to whatever a second DNS answer says (DNS rebinding), and the server still sees, and
    its certificate is still checked against, the URL's own host name."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    return parts._replace(netloc=netloc).geturl(), {"Host": host_header}, {"sni_hostname": host}


@dataclass
class DeliveryOutcome:
    ok: bool
    detail: str
    status_code: int | None = None  # None when no answer came (refused target, network error)


def deliver(
    url: str, secret: str, event: str, delivery_id: str, body: bytes, settings: Settings
) -> DeliveryOutcome:
    """One POST attempt; a 2xx answer counts as delivered."""
    try:
        address = check_target(url, settings)
    except Unprocessable as exc:
        return DeliveryOutcome(False, exc.message)
    target, host_header, extensions = pinned(url, address)
    headers = {
        **host_header,
        "Content-Type": "application/json",
        "User-Agent": "Distillery-Webhooks/1",
        "Distillery-Event": event,
        "Distillery-Delivery": delivery_id,
        "Distillery-Signature": sign(secret, int(time.time()), body),
    }
    try:
        with httpx.Client(timeout=settings.webhook_timeout_seconds) as client:
            request = client.build_request(
                "POST", target, content=body, headers=headers, extensions=extensions
            )
            response = client.send(request, follow_redirects=False)
    except httpx.HTTPError as exc:
        return DeliveryOutcome(False, f"{type(exc).__name__}: {str(exc)[:200]}")
    return DeliveryOutcome(
        response.is_success, f"HTTP {response.status_code}", response.status_code
    )
