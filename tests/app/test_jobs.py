from __future__ import annotations

from fastapi.testclient import TestClient

from app.db import session_scope
from app.models import Job, JobEvent, Metric
from app.schemas import JobStatus
from tests.app.conftest import spec, upload
from tests.factories import small_dataset


def test_submit_returns_a_queued_job(client: TestClient, headers: dict, job_files: dict) -> None:
    response = client.post("/v1/jobs", headers=headers, json=spec(job_files))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["object"] == "job"
    assert job["status"] == "queued"
    assert job["progress"] == 0.0
    assert job["error"] is None and job["result"] is None
    # No distillation section: the measured default recipe, written out in the stored spec.
    assert job["spec"]["distillation"]["temperature"] == 4.0
    assert job["spec"]["distillation"]["alpha"] == 0.9
    assert job["spec"]["distillation"]["augment"]["mixup"] == 0.4
    assert job["spec"]["student"] == {"arch": "mlp", "hidden": [16], "dropout": 0.0}
    assert job["spec"]["baseline"] is False
    fetched = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert fetched == job
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=headers).json()["data"]
    assert [e["kind"] for e in events] == ["queued"]


def test_unknown_student_arch_is_422_listing_the_known(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    body = spec(job_files, student={"arch": "transformer"})
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert "unknown student arch 'transformer'" in error["message"]
    assert "cnn, file, mlp, resnet" in error["message"]


def test_bad_values_are_422_naming_the_field(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    body = spec(job_files, distillation={"temperature": -1, "alpha": 0.5})
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 422
    assert "distillation.temperature" in response.json()["error"]["message"]
    typo = spec(job_files, trainig={"epochs": 2})
    message = client.post("/v1/jobs", headers=headers, json=typo).json()["error"]["message"]
    assert "trainig" in message


def test_job_naming_another_tenants_file_is_404(
    client: TestClient, headers: dict, other_headers: dict, job_files: dict
) -> None:
    mine = upload(client, other_headers, "dataset", small_dataset())
    body = spec({"teacher": job_files["teacher"], "dataset": mine["id"]})
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 404
    assert mine["id"] in response.json()["error"]["message"]


def test_file_with_the_wrong_purpose_is_422(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    body = spec({"teacher": job_files["dataset"], "dataset": job_files["dataset"]})
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 422
    assert "purpose='teacher'" in response.json()["error"]["message"]


def test_idempotency_key_replays_or_conflicts(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    keyed = {**headers, "Idempotency-Key": "run-42"}
    first = client.post("/v1/jobs", headers=keyed, json=spec(job_files))
    again = client.post("/v1/jobs", headers=keyed, json=spec(job_files))
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", headers=keyed, json=spec(job_files, training={"epochs": 3}))
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    listed = client.get("/v1/jobs", headers=headers).json()["data"]
    assert len(listed) == 1


def test_list_pages_with_a_cursor_and_filters_by_status(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    ids = [
        client.post("/v1/jobs", headers=headers, json=spec(job_files)).json()["id"]
        for _ in range(5)
    ]
    page1 = client.get("/v1/jobs?limit=2", headers=headers).json()
    assert page1["object"] == "list" and page1["has_more"] is True
    assert [j["id"] for j in page1["data"]] == ids[::-1][:2]
    page2 = client.get(f"/v1/jobs?limit=2&after={page1['data'][-1]['id']}", headers=headers).json()
    page3 = client.get(f"/v1/jobs?limit=2&after={page2['data'][-1]['id']}", headers=headers).json()
    assert [j["id"] for j in page2["data"] + page3["data"]] == ids[::-1][2:]
    assert page3["has_more"] is False
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=headers)
    cancelled = client.get("/v1/jobs?status=cancelled", headers=headers).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert client.get("/v1/jobs?limit=0", headers=headers).status_code == 422
    assert client.get("/v1/jobs?status=bogus", headers=headers).status_code == 422


def test_cancel_queued_ends_it_and_cancel_running_asks_it_to_stop(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    queued = client.post("/v1/jobs", headers=headers, json=spec(job_files)).json()
    done = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=headers).json()
    assert done["status"] == "cancelled" and done["finished_at"] is not None
    again = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=headers)
    assert again.status_code == 409
    running = client.post("/v1/jobs", headers=headers, json=spec(job_files)).json()
    with session_scope() as session:
        session.get_one(Job, running["id"]).status = JobStatus.running
    asked = client.post(f"/v1/jobs/{running['id']}/cancel", headers=headers).json()
    assert asked["status"] == "cancelling"


def test_events_metrics_after_cursor(client: TestClient, headers: dict, job_files: dict) -> None:
    job = client.post("/v1/jobs", headers=headers, json=spec(job_files)).json()
    with session_scope() as session:
        session.add(JobEvent(job_id=job["id"], kind="epoch_end", message="Epoch 1/1"))
        session.add_all(
            Metric(job_id=job["id"], name=name, step=step, epoch=1, value=step / 10)
            for step in (1, 2)
            for name in ("train_loss", "val_accuracy")
        )
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=headers).json()["data"]
    later = client.get(f"/v1/jobs/{job['id']}/events?after={events[0]['id']}", headers=headers)
    assert [e["kind"] for e in later.json()["data"]] == ["epoch_end"]
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics?name=train_loss", headers=headers).json()
    assert [(m["name"], m["step"], m["value"]) for m in metrics["data"]] == [
        ("train_loss", 1, 0.1),
        ("train_loss", 2, 0.2),
    ]


def test_event_stream_ends_when_the_job_has_ended(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    job = client.post("/v1/jobs", headers=headers, json=spec(job_files)).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    with client.stream(
        "GET", f"/v1/jobs/{job['id']}/events", headers={**headers, "Accept": "text/event-stream"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    assert "event: queued" in text and "event: cancelled" in text
    assert text.rstrip().endswith('data: {"status": "cancelled"}')


def test_report_and_artifacts_before_success(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    job = client.post("/v1/jobs", headers=headers, json=spec(job_files)).json()
    report = client.get(f"/v1/jobs/{job['id']}/report", headers=headers)
    assert report.status_code == 404
    assert report.json()["error"]["code"] == "report_not_ready"
    assert client.get(f"/v1/jobs/{job['id']}/artifacts", headers=headers).json()["data"] == []
    missing = client.get(f"/v1/jobs/{job['id']}/artifacts/student.pt", headers=headers)
    assert missing.status_code == 404 and "queued" in missing.json()["error"]["message"]


def test_every_job_endpoint_is_404_for_another_tenant(
    client: TestClient, headers: dict, other_headers: dict, job_files: dict
) -> None:
    job_id = client.post("/v1/jobs", headers=headers, json=spec(job_files)).json()["id"]
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/metrics"),
        ("GET", f"/v1/jobs/{job_id}/artifacts"),
        ("GET", f"/v1/jobs/{job_id}/artifacts/report.json"),
        ("GET", f"/v1/jobs/{job_id}/report"),
        ("GET", f"/v1/jobs/{job_id}/trials"),
    ):
        response = client.request(method, path, headers=other_headers)
        assert response.status_code == 404, (method, path, response.text)
    assert client.get("/v1/jobs", headers=other_headers).json()["data"] == []


CONTRACT = {
    ("post", "/v1/files"),
    ("get", "/v1/files"),
    ("get", "/v1/files/{file_id}"),
    ("get", "/v1/files/{file_id}/content"),
    ("delete", "/v1/files/{file_id}"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{job_id}"),
    ("post", "/v1/jobs/{job_id}/cancel"),
    ("get", "/v1/jobs/{job_id}/events"),
    ("get", "/v1/jobs/{job_id}/metrics"),
    ("get", "/v1/jobs/{job_id}/artifacts"),
    ("get", "/v1/jobs/{job_id}/artifacts/{name}"),
    ("get", "/v1/jobs/{job_id}/report"),
    ("get", "/v1/jobs/{job_id}/trials"),
    ("get", "/healthz"),
    ("get", "/readyz"),
}


def test_every_contract_endpoint_is_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    documented = {(method, path) for path, ops in paths.items() for method in ops}
    assert documented >= CONTRACT
    upload_body = paths["/v1/files"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload_body
    assert (
        "text/event-stream"
        in paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    )
