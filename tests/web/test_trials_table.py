"""The dashboard's trials table on a search's page, the best trial highlighted."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.db import session_scope
from app.models import Job
from tests.app.conftest import spec, upload
from tests.factories import auth, small_dataset
from tests.web.conftest import sign_in


def test_a_search_page_lists_its_trials_with_the_best_highlighted(
    web: TestClient, key: str
) -> None:
    headers = auth(key)
    teacher = upload(web, headers, "teacher", b"PK\x03\x04 not really torchscript", "t.pt")
    dataset = upload(web, headers, "dataset", small_dataset(), "d.npz")
    body = spec(
        {"teacher": teacher["id"], "dataset": dataset["id"]},
        search={"trials": 3, "parallel": 1, "budget_seconds": 60},
    )
    parent = web.post("/v1/jobs", headers=headers, json=body).json()
    outcomes = [
        ("complete", 0.71, "succeeded"),
        ("complete", 0.93, "succeeded"),
        ("pruned", 0.4, "cancelled"),
    ]
    with session_scope() as session:
        for number, (outcome, value, status) in enumerate(outcomes):
            session.add(
                Job(
                    id=f"job_trial{number}{parent['id'][-6:]}",
                    tenant_id=session.get_one(Job, parent["id"]).tenant_id,
                    kind="trial",
                    status=status,
                    spec=parent["spec"],
                    parent_id=parent["id"],
                    trial_number=number,
                    trial={
                        "params": {"alpha": 0.5, "family": "kd"},
                        "outcome": outcome,
                        "value": value,
                        "epochs_run": 2,
                    },
                )
            )
    sign_in(web, key)
    page = web.get(f"/jobs/{parent['id']}").text
    assert 'id="trials"' in page
    assert "3 at most, 1 at once, within 60 s" in page
    assert page.count('class="trial-') == 3
    assert page.count(" best") == 1
    best_row = page[page.index('class="trial-complete best"') :].split("</tr>")[0]
    assert "0.9300" in best_row and "alpha 0.5 · family kd" in best_row


def test_a_search_page_says_the_budget_bounds_a_search_naming_no_trials(
    web: TestClient, key: str
) -> None:
    headers = auth(key)
    teacher = upload(web, headers, "teacher", b"PK\x03\x04 not really torchscript", "t.pt")
    dataset = upload(web, headers, "dataset", small_dataset(), "d.npz")
    body = spec(
        {"teacher": teacher["id"], "dataset": dataset["id"]},
        search={"parallel": 2, "budget_seconds": 60},
    )
    parent = web.post("/v1/jobs", headers=headers, json=body).json()
    sign_in(web, key)
    page = web.get(f"/jobs/{parent['id']}").text
    assert "as many as the budget fits, 2 at once, within 60 s" in page
