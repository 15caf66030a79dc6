"""A job naming a file that does not exist says which field named it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.app.conftest import spec


def test_missing_teacher_file_names_the_field(
    client: TestClient, headers: dict[str, str], job_files: dict[str, str]
) -> None:
    body = spec({**job_files, "teacher": "file_doesnotexist"})
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert message.startswith("teacher.file_id: there is no file 'file_doesnotexist'"), message
    assert "purpose='teacher'" in message


def test_missing_dataset_file_names_the_field(
    client: TestClient, headers: dict[str, str], job_files: dict[str, str]
) -> None:
    body = spec({**job_files, "dataset": "file_gone"})
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 404
    assert response.json()["error"]["message"].startswith("dataset.file_id: ")


def test_an_eval_file_of_another_tenant_names_its_field(
    client: TestClient, headers: dict[str, str], job_files: dict[str, str]
) -> None:
    body = spec(job_files)
    body["student"] = {"arch": "hf", "config": {"n_layer": 1}}
    body["teacher"]["task"] = "causal_lm"
    body["dataset"] = {**body["dataset"], "eval_file_id": "file_not_yours"}
    body.pop("distillation", None)
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 404, response.text
    message = response.json()["error"]["message"]
    assert message.startswith("dataset.eval_file_id: there is no file 'file_not_yours'"), message
