"""A search's API side: its spec is checked, its trials are listed only when asked for,
and GET /v1/jobs/{id}/trials is the tenant's alone."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.db import session_scope
from app.ids import new_id
from app.models import Job
from app.schemas import JobStatus
from tests.app.conftest import spec


def add_trial(parent_id: str, number: int, status: JobStatus = JobStatus.queued) -> str:
    """A trial as a worker's search creates it (worker.search does this on its claim)."""
    with session_scope() as session:
        parent = session.get_one(Job, parent_id)
        child = Job(
            id=new_id("job"),
            tenant_id=parent.tenant_id,
            kind="trial",
            status=status,
            spec={**parent.spec, "search": None},
            parent_id=parent_id,
            trial_number=number,
            trial={"trial_id": number, "params": {"alpha": 0.5, "augment": False}},
        )
        session.add(child)
        return child.id


def test_parallel_beyond_trials_is_a_422_that_says_so(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    body = spec(job_files, search={"trials": 2, "parallel": 3, "budget_seconds": 60})
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 422
    assert "search.parallel (3) cannot exceed search.trials (2)" in response.text


def test_a_search_naming_no_trials_is_bounded_by_its_budget(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    """No `trials`: stored as null (as many as the budget fits), parallel needs no count,
    and the OpenAPI schema says what a missing `trials` means."""
    body = spec(job_files, search={"budget_seconds": 900, "parallel": 4})
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code in (200, 201), response.text
    assert response.json()["spec"]["search"] == {
        "trials": None,
        "budget_seconds": 900,
        "parallel": 4,
    }
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    trials = schemas["SearchSpec"]["properties"]["trials"]
    assert {"type": "null"} in trials["anyOf"] and trials.get("default") is None
    assert "left out: as many as budget_seconds fits" in trials["description"]


def test_trials_are_listed_for_their_search_only_and_only_when_asked(
    client: TestClient, headers: dict, other_headers: dict, job_files: dict
) -> None:
    body = spec(job_files, search={"trials": 3, "parallel": 2, "budget_seconds": 60})
    parent = client.post("/v1/jobs", headers=headers, json=body).json()
    assert parent["kind"] == "search" and parent["spec"]["search"]["trials"] == 3
    assert client.get(f"/v1/jobs/{parent['id']}/trials", headers=headers).json() == {
        "object": "list",
        "data": [],
        "has_more": False,
    }
    first = add_trial(parent["id"], 0, JobStatus.running)
    second = add_trial(parent["id"], 1)

    listed = {j["id"] for j in client.get("/v1/jobs", headers=headers).json()["data"]}
    assert parent["id"] in listed and not listed & {first, second}
    everything = client.get("/v1/jobs?include_trials=true", headers=headers).json()["data"]
    trials_listed = {j["id"]: j for j in everything if j["parent_id"] == parent["id"]}
    assert set(trials_listed) == {first, second}
    assert trials_listed[first]["kind"] == "trial" and trials_listed[first]["trial_number"] == 0

    trials = client.get(f"/v1/jobs/{parent['id']}/trials", headers=headers).json()["data"]
    assert [(t["number"], t["job_id"], t["status"]) for t in trials] == [
        (0, first, "running"),
        (1, second, "queued"),
    ]
    assert trials[0]["params"] == {"alpha": 0.5, "augment": False}
    assert (trials[0]["value"], trials[0]["epochs_run"], trials[0]["pruned"]) == (None, 0, False)

    other = client.get(f"/v1/jobs/{parent['id']}/trials", headers=other_headers)
    assert other.status_code == 404
    plain = client.post("/v1/jobs", headers=headers, json=spec(job_files)).json()
    not_search = client.get(f"/v1/jobs/{plain['id']}/trials", headers=headers)
    assert not_search.status_code == 404 and "not a search" in not_search.json()["error"]["message"]


def test_cancelling_a_running_search_ends_it_and_its_trials(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    body = spec(job_files, search={"trials": 3, "parallel": 2, "budget_seconds": 60})
    parent = client.post("/v1/jobs", headers=headers, json=body).json()
    with session_scope() as session:
        session.get_one(Job, parent["id"]).status = JobStatus.running  # as its worker leaves it
    running = add_trial(parent["id"], 0, JobStatus.running)
    queued = add_trial(parent["id"], 1)
    cancelled = client.post(f"/v1/jobs/{parent['id']}/cancel", headers=headers).json()
    assert cancelled["status"] == "cancelled"
    states = {
        j["id"]: j["status"]
        for j in client.get("/v1/jobs?include_trials=true", headers=headers).json()["data"]
    }
    assert (states[running], states[queued]) == ("cancelling", "cancelled")
