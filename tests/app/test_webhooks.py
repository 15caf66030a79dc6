from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.errors import Unprocessable
from app.webhooks import check_target, sign, verify
from tests.app.conftest import spec


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"job_1"}'
    expected = hmac.new(b"whsec_k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("whsec_k", 1700000000, body) == f"t=1700000000,v1={expected}"


def test_verify_accepts_fresh_and_refuses_tampered_or_stale() -> None:
    body = b'{"status":"succeeded"}'
    now = int(time.time())
    assert verify("s", sign("s", now, body), body)
    assert not verify("s", sign("s", now, body), body + b" ")
    assert not verify("other", sign("s", now, body), body)
    assert not verify("s", sign("s", now - 3600, body), body)
    assert not verify("s", "garbage", body)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/hook",
        "http://[::1]/x",
        "http://169.254.169.254/latest",
    ],
)
def test_internal_targets_are_refused(url: str) -> None:
    with pytest.raises(Unprocessable, match="non-public address"):
        check_target(url, Settings())


def test_allow_list_and_bad_urls() -> None:
    check_target("http://127.0.0.1:9/hook", Settings(webhook_allow_hosts=["127.0.0.1"]))
    check_target("https://93.184.216.34/hook", Settings())  # a public address literal
    with pytest.raises(Unprocessable, match="absolute http"):
        check_target("ftp://example.com/x", Settings())
    with pytest.raises(Unprocessable, match="does not resolve"):
        check_target("http://no-such-host.invalid/x", Settings())


def test_submit_refuses_an_internal_webhook_and_returns_the_secret(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    bad = client.post(
        "/v1/jobs", headers=headers, json=spec(job_files, webhook_url="http://127.0.0.1:1/x")
    )
    assert bad.status_code == 422
    assert "DISTILLERY_WEBHOOK_ALLOW_HOSTS" in bad.json()["error"]["message"]
    ok = client.post(
        "/v1/jobs", headers=headers, json=spec(job_files, webhook_url="https://93.184.216.34/hook")
    )
    assert ok.status_code == 201
    assert ok.json()["webhook_url"] == "https://93.184.216.34/hook"
    assert "webhook_url" not in ok.json()["spec"]
    secret = client.get("/v1/webhook_secret", headers=headers).json()
    assert secret["secret"].startswith("whsec_")
    assert client.get("/v1/webhook_secret", headers=headers).json() == secret
