"""Search under a budget on real processes: the embedded default's one worker runs a whole
search (the parent holds no worker while its trials run), the best student is the job's,
trials are listed, tenant-scoped, cancelled with their search, kept to the budget, and a
worker killed during a trial does not stop the search."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Api, clean_env, student_accuracy
from tests.e2e.test_cli import distillery
from tests.e2e.test_faults import Cluster, cluster  # noqa: F401 (the fixture)

pytestmark = pytest.mark.e2e

TRIAL_STATUSES = {"queued", "running", "complete", "pruned", "failed"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small MLP teacher on scikit-learn's digits (a few seconds to make, so that the
    searches, not the teacher, are what these tests spend their time on)."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    out = tmp_path_factory.mktemp("search-digits")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order].astype(np.int64)
    split = int(0.8 * len(x))
    np.savez(out / "digits.npz", x=x[:split], y=y[:split], x_val=x[split:], y_val=y[split:])
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(teacher.parameters(), lr=0.01)
    features, labels = torch.from_numpy(x[:split]), torch.from_numpy(y[:split])
    for _ in range(150):  # full batch
        optimizer.zero_grad()
        nn.functional.cross_entropy(teacher(features), labels).backward()
        optimizer.step()
    torch.jit.script(teacher.eval()).save(str(out / "teacher.pt"))
    return {"teacher": out / "teacher.pt", "dataset": out / "digits.npz"}


def upload_digits(api: Api, digits: dict[str, Path]) -> tuple[str, str]:
    teacher = api.upload(digits["teacher"], "teacher")["id"]
    return teacher, api.upload(digits["dataset"], "dataset")["id"]


def search_spec(
    teacher: str,
    dataset: str,
    *,
    epochs: int,
    trials: int | None,
    parallel: int,
    budget: int = 900,
) -> dict[str, Any]:
    """trials None: the spec names none (the budget bounds the search)."""
    search: dict[str, Any] = {"parallel": parallel, "budget_seconds": budget}
    if trials is not None:
        search["trials"] = trials
    return {
        "teacher": {"file_id": teacher},
        "student": {"arch": "mlp", "hidden": [16]},
        "dataset": {"file_id": dataset},
        "training": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.01, "seed": 0},
        "search": search,
    }


def trials_of(api: Api, job_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/jobs/{job_id}/trials")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    return list(body["data"])


def child_jobs(api: Api, job_id: str) -> list[dict[str, Any]]:
    listed = api.get("/v1/jobs?include_trials=true&limit=100").json()["data"]
    return [job for job in listed if job["parent_id"] == job_id]


def wait_for(condition: Any, api: Api, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, api.processes.logs()
        time.sleep(0.3)


def other_tenant_key(api: Api) -> str:
    assert api.root is not None
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--tenant", "search-other"],
        env=clean_env(DISTILLERY_DATA_DIR=str(api.root / "data")),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return created.stdout.strip().splitlines()[-1]


def test_a_search_runs_on_the_one_embedded_worker_and_keeps_the_best(
    embedded: Api, digits: dict[str, Path], tmp_path: Path
) -> None:
    teacher, dataset = upload_digits(embedded, digits)
    spec = search_spec(teacher, dataset, epochs=2, trials=3, parallel=2)
    job = embedded.wait(embedded.submit(spec)["id"], timeout=600)
    assert job["status"] == "succeeded", (job, embedded.processes.logs())
    assert job["kind"] == "search"

    trials = trials_of(embedded, job["id"])
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert {t["status"] for t in trials} <= {"complete", "pruned"}
    assert trials[0]["params"]["alpha"] == 0.0  # scratch is always a candidate
    (best,) = [t for t in trials if t["best"]]
    complete = [t for t in trials if t["status"] == "complete"]
    assert best["value"] == max(t["value"] for t in complete)
    assert all(t["pruned"] == (t["status"] == "pruned") for t in trials)

    report = embedded.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["search"]["trials"] == 3
    assert report["search"]["best"]["number"] == best["number"]
    assert [t["number"] for t in report["trials"]] == [0, 1, 2]
    assert job["result"]["search"] == {"trials": 3, "best_trial": best["number"]}
    student = embedded.get(f"/v1/jobs/{job['id']}/artifacts/student.pt")
    assert student.status_code == 200
    (tmp_path / "student.pt").write_bytes(student.content)
    assert student_accuracy(tmp_path / "student.pt", digits["dataset"]) == pytest.approx(
        report["student"]["accuracy"]
    )

    listed = [j["id"] for j in embedded.get("/v1/jobs?limit=100").json()["data"]]
    assert job["id"] in listed
    assert not set(listed) & {t["job_id"] for t in trials}  # trials only when asked for
    children = child_jobs(embedded, job["id"])
    assert sorted(c["trial_number"] for c in children) == [0, 1, 2]
    assert all(c["kind"] == "trial" and c["webhook_url"] is None for c in children)
    kinds = [e["kind"] for e in embedded.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert "requeued" not in kinds and kinds[-1] == "succeeded"

    as_json = distillery(embedded, "trials", job["id"], "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == trials
    table = distillery(embedded, "trials", job["id"]).stdout
    best_line = next(line for line in table.splitlines() if f"{best['number']} (best)" in line)
    assert f"{best['value']:.4f}" in best_line

    other = Api(embedded.base, other_tenant_key(embedded), embedded.processes)
    assert other.get(f"/v1/jobs/{job['id']}/trials").status_code == 404
    assert embedded.get(f"/v1/jobs/{children[0]['id']}/trials").status_code == 404  # no search


def test_cancelling_a_search_cancels_its_trials(embedded: Api, digits: dict[str, Path]) -> None:
    teacher, dataset = upload_digits(embedded, digits)
    spec = search_spec(teacher, dataset, epochs=200, trials=4, parallel=2)
    job_id = embedded.submit(spec)["id"]
    wait_for(lambda: any(c["status"] == "running" for c in child_jobs(embedded, job_id)), embedded)
    response = embedded.client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    wait_for(
        lambda: all(c["status"] == "cancelled" for c in child_jobs(embedded, job_id)), embedded
    )
    assert embedded.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert len(child_jobs(embedded, job_id)) == 2  # no trial was asked for after the cancel


def stamp(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def test_the_search_keeps_to_its_budget(embedded: Api, digits: dict[str, Path]) -> None:
    """Trials far longer than the budget: the running one is stopped at the budget, none
    starts after it, and the search ends (failed: no trial could finish in time)."""
    teacher, dataset = upload_digits(embedded, digits)
    budget = 12
    spec = search_spec(teacher, dataset, epochs=400, trials=5, parallel=1, budget=budget)
    job = embedded.wait(embedded.submit(spec)["id"], timeout=300)
    assert job["status"] == "failed" and job["error"]["code"] == "search_failed"
    assert "raise search.budget_seconds" in job["error"]["message"]
    children = child_jobs(embedded, job["id"])
    started = stamp(job["started_at"])
    assert all(
        c["started_at"] is None or stamp(c["started_at"]) < started + budget for c in children
    )
    assert {c["error"]["code"] for c in children} == {"search_budget"}
    assert {t["status"] for t in trials_of(embedded, job["id"])} == {"pruned"}


def test_a_search_naming_no_trials_runs_them_until_the_budget_left_cannot_fit_one(
    embedded: Api, digits: dict[str, Path]
) -> None:
    """No `trials`: the budget bounds the search. Trials start within the budget, and the
    search ends when what is left of it no longer fits the median complete trial."""
    teacher, dataset = upload_digits(embedded, digits)
    budget = 30
    spec = search_spec(teacher, dataset, epochs=2, trials=None, parallel=1, budget=budget)
    job = embedded.wait(embedded.submit(spec)["id"], timeout=300)
    assert job["status"] == "succeeded", (job, embedded.processes.logs())
    assert job["spec"]["search"]["trials"] is None
    children = child_jobs(embedded, job["id"])
    trials = trials_of(embedded, job["id"])
    assert len(children) == len(trials) == job["result"]["search"]["trials"] >= 2
    end = stamp(job["started_at"]) + budget
    assert all(c["started_at"] is None or stamp(c["started_at"]) < end for c in children)
    complete = [c for c in children if c["status"] == "succeeded"]
    seconds = sorted(stamp(c["finished_at"]) - stamp(c["started_at"]) for c in complete)
    median = (seconds[(len(seconds) - 1) // 2] + seconds[len(seconds) // 2]) / 2
    assert end - stamp(job["finished_at"]) < median  # the budget left fitted no more
    events = [e["message"] for e in embedded.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert any(f"as many trials as {budget} s fit" in message for message in events)
    report = embedded.get(f"/v1/jobs/{job['id']}/report")
    assert report.status_code == 200, report.text
    assert report.json()["search"]["trials_cap"] is None


def test_a_worker_killed_during_a_trial_does_not_stop_the_search(
    cluster: Cluster,  # noqa: F811 (the fixture)
    digits: dict[str, Path],
) -> None:
    api = cluster.start()
    teacher, dataset = upload_digits(api, digits)
    spec = search_spec(teacher, dataset, epochs=6, trials=2, parallel=1)
    job_id = api.submit(spec)["id"]
    worker = cluster.start_worker()

    def trial_is_training() -> bool:
        return any(
            c["status"] == "running" and c["progress"] > 0.1 for c in child_jobs(api, job_id)
        )

    wait_for(trial_is_training, api)
    (victim,) = [c["id"] for c in child_jobs(api, job_id) if c["status"] == "running"]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    cluster.start_worker()
    job = api.wait(job_id, timeout=600)
    assert job["status"] == "succeeded", (job, cluster.processes.logs())
    victim_events = [e["kind"] for e in api.get(f"/v1/jobs/{victim}/events").json()["data"]]
    assert "requeued" in victim_events  # the sweep took the lost trial back
    parent_events = [e["kind"] for e in api.get(f"/v1/jobs/{job_id}/events").json()["data"]]
    assert "requeued" not in parent_events  # the search itself holds no lease
    assert {t["status"] for t in trials_of(api, job_id)} <= {"complete", "pruned"}


def test_a_bare_search_is_drawn_around_its_first_trial_s_plan(
    embedded: Api, digits: dict[str, Path]
) -> None:
    """A spec that leaves the schedule open: the scratch trial is planned by its worker
    (as any job), the spec's own recipe runs next at that plan, and a third trial, when the
    budget left fits one, draws epochs and learning rate around it, not around
    TRAINING_DEFAULTS."""
    teacher, dataset = upload_digits(embedded, digits)
    spec = search_spec(teacher, dataset, epochs=1, trials=3, parallel=1, budget=600)
    del spec["training"]
    job = embedded.wait(embedded.submit(spec)["id"], timeout=900)
    assert job["status"] == "succeeded", (job, embedded.processes.logs())
    children = sorted(child_jobs(embedded, job["id"]), key=lambda c: c["trial_number"])
    planned = children[0]["spec"]["training"]
    assert planned["learning_rate"] == 0.01 and planned["epochs"] > 20  # the rule's plan
    assert planned["budget_seconds"] == 300  # half the search's
    kinds = [e["kind"] for e in embedded.get(f"/v1/jobs/{children[0]['id']}/events").json()["data"]]
    assert "training_planned" in kinds
    trials = trials_of(embedded, job["id"])
    assert trials[0]["params"]["alpha"] == 0.0
    assert trials[0]["params"]["epochs"] == planned["epochs"]
    assert trials[1]["params"]["family"] == "kd"
    assert trials[1]["params"]["epochs"] == planned["epochs"]
    assert trials[1]["params"]["learning_rate"] == 0.01
    for drawn in [t["params"] for t in trials[2:]]:  # a third runs if the budget left fits it
        assert planned["epochs"] / 4 <= drawn["epochs"] <= planned["epochs"]
        assert 1e-3 <= drawn["learning_rate"] <= 1e-1
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == len(trials)
