"""Property-based requests generated from our own OpenAPI schema: no input, however odd,
makes the API answer with a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from app.main import app
from tests.factories import auth, new_key

schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def fuzz_headers(_migrated: None) -> dict[str, str]:
    return auth(new_key("schemathesis"))


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_input_makes_a_server_error(case: Any, fuzz_headers: dict[str, str]) -> None:
    case.call_and_validate(headers=fuzz_headers, checks=[not_a_server_error])
