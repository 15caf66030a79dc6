"""A search's orchestration on a real SQLite database and a real Optuna study: its start,
each trial's end moving it on, the budget, the end that hands the best student over, the
cancel that reaches its trials, and the sweep that leaves it alone. The trials' training
is played by writing what a worker writes (metrics, artifacts, the final status); the
end-to-end tests run real trials on a real worker."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import inspect, select

from app.config import Settings, get_settings
from app.db import make_engine, session_scope
from app.ids import new_id
from app.migrate import upgrade_head
from app.models import Artifact, Job, JobEvent, Metric, utcnow
from app.schemas import JobStatus
from app.services import jobs as service
from app.services.keys import get_or_create_tenant
from app.storage import open_storage
from tests.e2e.conftest import fresh_database
from worker.kd.budget import plan_job, with_plan
from worker.kd.spec import MAX_TRIALS, JobSpec, SearchSpec
from worker.maintenance import sweep
from worker.search import advance, start, trials_of
from worker.trials import ask, open_study, study_storage

SWEEP = Settings(lease_seconds=30, max_attempts=3, requeue_after_seconds=600)


@pytest.fixture(scope="module", autouse=True)
def _migrated() -> None:
    upgrade_head()


def search_spec(trials: int | None = 3, parallel: int = 2, budget: int = 600) -> dict[str, Any]:
    """A search spec as stored at submit; trials None: the spec names none."""
    search = {"parallel": parallel, "budget_seconds": budget}
    if trials is not None:
        search["trials"] = trials
    return JobSpec.model_validate(
        {
            "teacher": {"file_id": "file_teacher"},
            "student": {"arch": "mlp", "hidden": [16]},
            "dataset": {"builtin": "digits"},
            "training": {"epochs": 3, "learning_rate": 0.01},
            "baseline": True,
            "search": search,
        }
    ).model_dump(mode="json")


def make_search(spec: dict[str, Any], started_ago: float | None = None) -> str:
    with session_scope() as session:
        tenant = get_or_create_tenant(session, f"search-{uuid.uuid4().hex[:8]}")
        job = Job(id=new_id("job"), tenant_id=tenant.id, kind="search", spec=spec)
        session.add(job)
    start(job.id, get_settings())
    if started_ago is not None:
        with session_scope() as session:
            session.get_one(Job, job.id).started_at = utcnow() - timedelta(seconds=started_ago)
    return job.id


def children(parent_id: str) -> list[Job]:
    with session_scope() as session:
        return trials_of(session, parent_id)


def get(job_id: str) -> Job:
    with session_scope() as session:
        return session.get_one(Job, job_id)


def play_trial(
    child_id: str,
    accuracies: list[float],
    status: JobStatus = JobStatus.succeeded,
    code: str | None = None,
    seconds: float = 1.0,
    then_advance: bool = True,
) -> None:
    """Write what a worker writes for a trial: per-epoch metrics, artifacts, the end."""
    storage = open_storage(get_settings())
    with session_scope() as session:
        child = session.get_one(Job, child_id)
        for epoch, value in enumerate(accuracies, start=1):
            session.add(
                Metric(job_id=child_id, name="val_accuracy", step=epoch, epoch=epoch, value=value)
            )
        if status == JobStatus.succeeded:
            report = {"teacher": {"accuracy": 0.97}, "student": {"accuracy": accuracies[-1]}}
            for name, body in (("report.json", json.dumps(report)), ("student.pt", child_id)):
                source = Path(storage.tmp_dir) / f"{child_id}-{name}"
                source.parent.mkdir(parents=True, exist_ok=True)
                source.write_text(body)
                relative, size, sha = storage.put_artifact(child_id, name, source)
                session.add(
                    Artifact(job_id=child_id, name=name, bytes=size, sha256=sha, path=relative)
                )
        child.status = status
        child.error = None if code is None else {"code": code, "message": code}
        child.started_at = utcnow() - timedelta(seconds=seconds)
        child.finished_at = utcnow()
    if then_advance:
        advance(get(child_id).parent_id or "", get_settings())


def test_on_postgresql_the_study_lives_in_its_own_schema() -> None:
    """Optuna's own alembic_version and `trials` table never land in the app's schema."""
    with fresh_database("distillery_search") as url:
        study = open_study(
            "job_pg", JobSpec.model_validate(search_spec()), Settings(database_url=url)
        )
        study.enqueue_trial({"alpha": 0.0})
        engine = make_engine(url)
        try:
            tables = set(inspect(engine).get_table_names(schema="optuna"))
            public = set(inspect(engine).get_table_names(schema="public"))
        finally:
            engine.dispose()
        study_storage(Settings(database_url=url)).remove_session()
        study_storage(Settings(database_url=url)).engine.dispose()
    assert {"alembic_version", "trials", "studies"} <= tables
    assert not public & {"alembic_version", "trials", "studies"}


def test_the_spec_keeps_parallel_within_trials() -> None:
    with pytest.raises(ValidationError, match=r"search.parallel \(4\) cannot exceed"):
        SearchSpec(trials=3, parallel=4)


def test_a_spec_naming_no_trials_keeps_that_when_stored() -> None:
    """No `trials`: the budget bounds the search (MAX_TRIALS at most); the stored spec says
    so with null, not with a default count, and parallel has no count to stay within."""
    stored = search_spec(trials=None, parallel=4)
    assert stored["search"] == {"trials": None, "budget_seconds": 600, "parallel": 4}
    search = JobSpec.model_validate(stored).search
    assert search is not None and search.trials is None and search.most_trials == MAX_TRIALS
    assert SearchSpec(trials=5).most_trials == 5


def test_start_queues_the_scratch_candidate_first_and_lets_go_of_the_search() -> None:
    parent_id = make_search(search_spec())
    parent = get(parent_id)
    assert parent.status == JobStatus.running
    assert parent.worker is None and parent.heartbeat_at is None
    first, second = children(parent_id)
    assert [first.trial_number, second.trial_number] == [0, 1]
    assert {first.status, second.status} == {JobStatus.queued}
    assert first.kind == "trial" and first.parent_id == parent_id
    assert first.trial is not None and first.trial["params"]["alpha"] == 0.0
    assert first.spec["distillation"]["losses"] == [{"kind": "ce"}]  # no teacher at all
    child_spec = JobSpec.model_validate(first.spec)
    assert child_spec.search is None and child_spec.baseline is False
    assert first.spec["training"]["epochs"] == 3
    assert second.trial is not None
    assert second.spec["training"]["learning_rate"] == second.trial["params"]["learning_rate"]


def test_the_sweep_leaves_a_running_search_alone() -> None:
    parent_id = make_search(search_spec())
    result = sweep(SWEEP)
    assert parent_id not in result.requeued + result.failed + result.cancelled
    assert get(parent_id).status == JobStatus.running


def test_the_sweep_moves_a_search_whose_trial_end_was_lost() -> None:
    """A worker that died between a trial's end and moving the search on: the sweep does it
    once the search has not moved for a lease's time."""
    parent_id = make_search(search_spec(trials=3, parallel=1))
    (scratch,) = children(parent_id)
    play_trial(scratch.id, [0.5, 0.6, 0.7], then_advance=False)
    assert parent_id not in sweep(SWEEP).searches  # it moved a moment ago
    with session_scope() as session:
        session.get_one(Job, parent_id).updated_at = utcnow() - timedelta(seconds=60)
    assert parent_id in sweep(SWEEP).searches
    first, second = children(parent_id)
    assert first.trial is not None and first.trial["outcome"] == "complete"
    assert second.status == JobStatus.queued and get(parent_id).status == JobStatus.running


def test_trials_end_one_by_one_and_the_best_student_is_the_search_s() -> None:
    parent_id = make_search(search_spec(trials=3, parallel=2))
    scratch, second = children(parent_id)
    play_trial(scratch.id, [0.5, 0.6, 0.7])
    assert len(children(parent_id)) == 3  # one ended, the next one was asked for
    third = children(parent_id)[2]
    play_trial(second.id, [0.4], JobStatus.cancelled, code="pruned")
    assert get(parent_id).status == JobStatus.running  # the third is still running
    play_trial(third.id, [0.6, 0.8, 0.9])

    parent = get(parent_id)
    assert parent.status == JobStatus.succeeded, parent.error
    assert parent.result is not None
    assert parent.result["search"] == {"trials": 3, "best_trial": 2}
    assert parent.result["student_accuracy"] == 0.9
    storage = open_storage(get_settings())
    with session_scope() as session:
        rows = {
            a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == parent_id))
        }
        assert storage.read_bytes("artifacts", rows["student.pt"].path).decode() == third.id
        report = json.loads(storage.read_bytes("artifacts", rows["report.json"].path))
        trials = service.list_trials(session, session.get_one(Job, parent_id))
    assert report["search"]["best"]["number"] == 2
    assert report["search"]["scratch"]["value"] == 0.7
    assert report["search"]["outcomes"] == {"complete": 2, "pruned": 1, "failed": 0}
    assert [t["status"] for t in report["trials"]] == ["complete", "pruned", "complete"]
    assert [(t.status, t.value, t.epochs_run, t.pruned, t.best) for t in trials] == [
        ("complete", 0.7, 3, False, False),
        ("pruned", 0.4, 1, True, False),
        ("complete", 0.9, 3, False, True),
    ]


def test_a_search_whose_trials_all_fail_fails_with_the_first_reason() -> None:
    parent_id = make_search(search_spec(trials=2, parallel=2))
    for child in children(parent_id):
        with session_scope() as session:
            session.get_one(Job, child.id).error = {"code": "x", "message": "Bad teacher."}
        play_trial(child.id, [], JobStatus.failed, code="file_missing")
    parent = get(parent_id)
    assert parent.status == JobStatus.failed and parent.error is not None
    assert parent.error["code"] == "search_failed"


def test_no_trial_starts_when_the_budget_left_cannot_fit_one() -> None:
    parent_id = make_search(search_spec(trials=4, parallel=1, budget=100), started_ago=40)
    (scratch,) = children(parent_id)
    play_trial(scratch.id, [0.5, 0.6, 0.7], seconds=90)  # 60 s left, a trial takes 90
    assert len(children(parent_id)) == 1
    parent = get(parent_id)
    assert parent.status == JobStatus.succeeded
    assert parent.result is not None and parent.result["search"]["trials"] == 1


def spend(parent_id: str, seconds: float) -> None:
    """Let `seconds` of the search's budget pass (its start moves back)."""
    with session_scope() as session:
        parent = session.get_one(Job, parent_id)
        assert parent.started_at is not None
        parent.started_at -= timedelta(seconds=seconds)


def test_a_search_naming_no_trials_runs_them_while_the_budget_left_fits_one() -> None:
    """The budget, not a count, bounds it: each trial takes 95 s of a 1050 s budget, the next
    one starts while the budget left fits the trials' measured median (95 s): 10 trials,
    more than the 8 a default count gave, and none once 50 s are left."""
    parent_id = make_search(search_spec(trials=None, parallel=1, budget=1050))
    for number in range(10):
        current = children(parent_id)
        assert len(current) == number + 1  # one at a time, the next one only now
        spend(parent_id, 100)
        play_trial(current[-1].id, [0.5, 0.6, 0.6 + number / 100], seconds=95)
        if number < 9:  # 1050 - 100 * (number + 1) s left, at least 150: fits
            assert get(parent_id).status == JobStatus.running
            assert get(parent_id).progress == pytest.approx((number + 1) * 100 / 1050, abs=0.01)
    parent = get(parent_id)  # 50 s left, a trial takes 95: none starts, the search ends
    assert len(children(parent_id)) == 10
    assert parent.status == JobStatus.succeeded, parent.error
    assert parent.result is not None
    assert parent.result["search"] == {"trials": 10, "best_trial": 9}
    storage = open_storage(get_settings())
    with session_scope() as session:
        query = select(JobEvent.message).where(JobEvent.job_id == parent_id)
        events = list(session.scalars(query))
        report_row = session.scalars(
            select(Artifact).where(Artifact.job_id == parent_id, Artifact.name == "report.json")
        ).one()
        report = json.loads(storage.read_bytes("artifacts", report_row.path))
    assert any(f"as many trials as 1050 s fit (at most {MAX_TRIALS})" in m for m in events)
    assert report["search"]["trials"] == 10 and report["search"]["trials_cap"] is None
    assert len(report["trials"]) == 10


def test_a_search_naming_no_trials_judges_the_fit_by_the_trials_that_ended() -> None:
    """The estimate is the measured median of the trials that ran to the end: short trials
    keep the search going where long ones end it, at the same budget left."""
    short = make_search(search_spec(trials=None, parallel=1, budget=300))
    long = make_search(search_spec(trials=None, parallel=1, budget=300))
    for parent_id, seconds in ((short, 80), (long, 250)):
        spend(parent_id, 200)  # 100 s left
        play_trial(children(parent_id)[0].id, [0.5, 0.6, 0.7], seconds=seconds)
    assert len(children(short)) == 2 and get(short).status == JobStatus.running
    assert len(children(long)) == 1 and get(long).status == JobStatus.succeeded


def test_a_search_naming_no_trials_gives_up_after_three_failures_and_no_success() -> None:
    """Trials that fail in a second (a teacher that does not load) would fill the budget
    with failures: three, none complete, and no more are queued; the search fails."""
    parent_id = make_search(search_spec(trials=None, parallel=1, budget=100_000))
    for number in range(3):
        play_trial(children(parent_id)[number].id, [], JobStatus.failed, code="file_missing")
    assert len(children(parent_id)) == 3
    parent = get(parent_id)
    assert parent.status == JobStatus.failed and parent.error is not None
    assert parent.error["code"] == "search_failed"
    assert (
        "None of the 3 trials ran to the end. The first failure: file_missing"
        in (parent.error["message"])
    )


def test_a_search_naming_trials_stops_at_that_many_with_budget_to_spare() -> None:
    parent_id = make_search(search_spec(trials=3, parallel=1, budget=100_000))
    for number in range(3):
        play_trial(children(parent_id)[number].id, [0.5, 0.6, 0.7], seconds=1)
    assert len(children(parent_id)) == 3
    parent = get(parent_id)
    assert parent.status == JobStatus.succeeded
    assert parent.result is not None and parent.result["search"]["trials"] == 3


def test_a_spent_budget_drops_the_queued_trials_and_ends_the_search() -> None:
    parent_id = make_search(search_spec(trials=3, parallel=2, budget=30), started_ago=60)
    scratch, queued = children(parent_id)
    play_trial(scratch.id, [0.5, 0.6, 0.7])
    assert get(queued.id).status == JobStatus.cancelled
    assert get(queued.id).error == {
        "code": "search_budget",
        "message": "Stopped: the search's budget_seconds is spent.",
    }
    assert get(parent_id).status == JobStatus.succeeded
    with session_scope() as session:
        trials = service.list_trials(session, session.get_one(Job, parent_id))
    assert [(t.status, t.value, t.epochs_run) for t in trials] == [
        ("complete", 0.7, 3),
        ("pruned", None, 0),
    ]


def test_cancel_reaches_the_trials() -> None:
    parent_id = make_search(search_spec(trials=3, parallel=2))
    first, second = children(parent_id)
    with session_scope() as session:
        session.get_one(Job, second.id).status = JobStatus.running
    with session_scope() as session:
        parent = session.get_one(Job, parent_id)
        service.cancel_job(session, parent.tenant_id, parent_id)
    assert get(parent_id).status == JobStatus.cancelled
    assert get(first.id).status == JobStatus.cancelled
    assert get(second.id).status == JobStatus.cancelling
    advance(parent_id, get_settings())  # a trial ending later moves nothing
    assert len(children(parent_id)) == 2


def bare_search_spec(trials: int = 4, parallel: int = 2, budget: int = 900) -> dict[str, Any]:
    """A search whose spec leaves the schedule to the planner (no epochs, no learning rate)."""
    return JobSpec.model_validate(
        {
            "teacher": {"file_id": "file_teacher"},
            "student": {"arch": "mlp", "hidden": [16]},
            "dataset": {"builtin": "digits"},
            "search": {"trials": trials, "parallel": parallel, "budget_seconds": budget},
        }
    ).model_dump(mode="json")


def store_plan(child_id: str, n_train: int = 1000, n_params: int = 2000) -> dict[str, Any]:
    """What the worker stores at a trial's first claim: the planner's training section."""
    with session_scope() as session:
        child = session.get_one(Job, child_id)
        spec = JobSpec.model_validate(child.spec)
        planned = with_plan(spec, plan_job(spec, n_train, n_params, None))
        child.spec = {**child.spec, "training": planned.training.model_dump(mode="json")}
        return dict(child.spec["training"])


def test_a_bare_search_is_centred_on_the_plan_of_its_reference_trial() -> None:
    """The scratch trial is queued alone with its schedule open (its worker plans it, within
    half the search's budget); the trials after it are drawn around that plan, not around
    TRAINING_DEFAULTS (20 epochs, lr 1e-3)."""
    parent_id = make_search(bare_search_spec(trials=4, parallel=2, budget=900))
    (reference,) = children(parent_id)  # alone, although 2 may run at once
    assert reference.trial is not None and reference.trial["params"]["alpha"] == 0.0
    assert reference.spec["training"]["epochs"] is None
    assert reference.spec["training"]["learning_rate"] is None
    assert reference.spec["training"]["budget_seconds"] == 450.0
    advance(parent_id, get_settings())  # nothing planned yet: nothing more is queued
    assert len(children(parent_id)) == 1

    planned = store_plan(reference.id)
    assert planned["epochs"] > 20 and planned["learning_rate"] == 1e-2  # the rule's, not 1e-3
    play_trial(reference.id, [0.5, 0.6, 0.7])
    later = children(parent_id)[1:]
    assert len(later) == 2  # now `parallel` run at once
    assert later[0].trial is not None  # the spec's own recipe at the planned schedule
    assert later[0].trial["params"] == {
        "family": "kd",
        "temperature": 4.0,
        "alpha": 0.9,
        "augment": True,
        "learning_rate": planned["learning_rate"],
        "epochs": planned["epochs"],
    }
    for child in later:
        assert child.trial is not None
        params = child.trial["params"]
        assert 1e-3 <= params["learning_rate"] <= 1e-1
        assert planned["epochs"] / 4 <= params["epochs"] <= planned["epochs"]
        assert child.spec["training"]["epochs"] == params["epochs"]
    first = children(parent_id)[0]
    assert first.trial is not None  # the report shows the reference's planned schedule
    assert first.trial["params"]["epochs"] == planned["epochs"]


def test_every_trial_of_a_search_draws_its_own_params() -> None:
    """Each trial is asked for by a fresh study (as by whichever worker ended the last
    one); 8 trials are 8 distinct settings, not the scratch and one repeated draw."""
    parent_id = make_search(search_spec(trials=8, parallel=1))
    for number in range(8):
        child = children(parent_id)[number]
        play_trial(child.id, [0.5, 0.6, 0.5 + number / 100])
    trials = children(parent_id)
    assert len(trials) == 8 and get(parent_id).status == JobStatus.succeeded
    drawn = [json.dumps((t.trial or {})["params"], sort_keys=True) for t in trials]
    assert len(set(drawn)) == 8, drawn
    temperatures = [(t.trial or {})["params"]["temperature"] for t in trials]
    assert len(set(temperatures)) == 8, temperatures  # no two trials share a random stream


def test_an_enqueued_trial_and_the_one_after_it_draw_from_distinct_streams() -> None:
    """Every ask opens the study anew (as each worker does); the enqueued first trial's free
    params and the next trial's are distinct draws, not one seed twice."""
    spec = JobSpec.model_validate(search_spec(trials=4))
    parent_id = f"job_streams_{uuid.uuid4().hex[:8]}"
    open_study(parent_id, spec, get_settings()).enqueue_trial({"alpha": 0.0})
    temperatures = []
    for _ in range(4):
        trial = ask(open_study(parent_id, spec, get_settings()), spec)
        temperatures.append(trial.suggest_float("temperature", 1.0, 8.0, log=True))
    assert len(set(temperatures)) == 4, temperatures
