"""An unknown key in a job spec names the nearest known field, in the API's 422 and in the
function the CLI uses before uploading anything."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.field_hints import known_fields, unknown_field_message
from app.schemas import JobCreate
from tests.app.conftest import spec


def test_nearest_field_through_sections_unions_and_lists() -> None:
    assert unknown_field_message(JobCreate, ("training", "epoch")) == (
        "unknown field; did you mean 'epochs'?"
    )
    assert "'hidden'" in unknown_field_message(JobCreate, ("student", "mlp", "hiden"))
    assert "'channels'" in unknown_field_message(JobCreate, ("student", "cnn", "channel"))
    losses = ("distillation", "losses", 0, "wieght")
    assert "'weight'" in unknown_field_message(JobCreate, losses)
    assert "'distillation'" in unknown_field_message(JobCreate, ("distilation",))
    # The tag narrows a union to its member: an MLP has no `channels`.
    assert "channels" not in known_fields(JobCreate, ("student", "mlp", "x"))


def test_no_near_field_lists_the_fields_there() -> None:
    message = unknown_field_message(JobCreate, ("training", "zzzzzz"))
    assert message.startswith("unknown field; the fields here are ")
    assert "epochs" in message and "learning_rate" in message


def test_api_422_suggests_the_nearest_field(
    client: TestClient, headers: dict[str, str], job_files: dict[str, str]
) -> None:
    body = spec(job_files, training={"epoch": 3})
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "training.epoch: unknown field; did you mean 'epochs'?"
    )
