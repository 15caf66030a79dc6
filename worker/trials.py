"""A search's Optuna study, and the reporter that lets a trial be pruned while it trains.

The study lives in Optuna's own tables (it keeps its own `alembic_version` and a table
named `trials`, so it never shares the app's schema): a SQLite file `search.db` beside the
app's SQLite database, or the schema `optuna` of the app's PostgreSQL database. Either
way it survives any worker, so a search resumes wherever its next trial ends.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import optuna
from sqlalchemy import select, text

from app.config import Settings
from app.db import make_engine, session_scope
from app.models import Job
from worker.kd.spec import SEARCH_METRICS, JobSpec
from worker.reporter import DatabaseReporter

OPTUNA_SCHEMA = "optuna"
# Why a trial was stopped early (the child job ends `cancelled` with this error code).
TRIAL_STOPS = {
    "pruned": "Pruned: its selection metric fell behind the other trials at the same epoch.",
    "search_budget": "Stopped: the search's budget_seconds is spent.",
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(settings: Settings) -> str:
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        return f"sqlite:///{settings.resolved_data_dir / 'search.db'}"
    return url


@lru_cache
def _storage(url: str) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}})
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{OPTUNA_SCHEMA}"'))
    finally:
        engine.dispose()
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs={
            "pool_pre_ping": True,
            "connect_args": {"options": f"-csearch_path={OPTUNA_SCHEMA}"},
        },
    )


def study_storage(settings: Settings) -> optuna.storages.RDBStorage:
    return _storage(storage_url(settings))


def study_name(parent_id: str) -> str:
    return f"distillery-{parent_id}"


def open_study(
    parent_id: str, spec: JobSpec, settings: Settings, reference_epochs: int | None = None
) -> optuna.Study:
    """The search's study, created on first use. TPE proposes; Hyperband (successive
    halving over brackets) prunes on the per-epoch selection metric, the resource being
    epochs, its most the epochs of the first trial that ran to the end (`"auto"`: the
    reference trial's planned schedule, see worker.search), its least a tenth of those
    (`reference_epochs`, when known): a planned schedule warms up for its first 5 %, so
    the first epochs say little of how a trial will end. The sampler and pruner are not
    stored, so every process builds the same ones; ask for trials with `ask`."""
    return optuna.create_study(
        study_name=study_name(parent_id),
        storage=study_storage(settings),
        sampler=trial_sampler(spec, 0),
        pruner=optuna.pruners.HyperbandPruner(
            min_resource=min_resource(reference_epochs), max_resource="auto"
        ),
        direction="maximize",
        load_if_exists=True,
    )


def min_resource(reference_epochs: int | None) -> int:
    """The epochs a trial runs before Hyperband may prune it."""
    return max(1, math.ceil((reference_epochs or 0) / 10))


def startup_trials(spec: JobSpec) -> int:
    """Trials TPE draws at random before it models the others: half the search's, 2 to 10
    (10 when the budget, not `trials`, bounds the search: Optuna's own default)."""
    trials = spec.search.most_trials if spec.search is not None else 8
    return min(10, max(2, trials // 2))


def trial_sampler(spec: JobSpec, number: int) -> optuna.samplers.TPESampler:
    """The sampler for the study's trial `number`: TPE seeded from the spec's seed and the
    trial's number.

    A search's trials are asked for by different processes (whichever worker ends a
    trial), each building the study anew. A sampler seeded with the spec's seed alone
    restarts its random stream in every process, so every random (startup) draw was the
    same draw: 8 trials tried 2 settings. Seeding once per study cannot survive a process,
    so each ask gets the study's seed stream advanced by the trial's number instead: as
    reproducible as one seeded sampler, and distinct trials draw distinct params."""
    seed = (spec.training.seed * 1_000_003 + number) % 2**32
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(spec))


def ask(study: optuna.Study, spec: JobSpec) -> optuna.Trial:
    """The study's next trial, drawn by the sampler for its number (`trial_sampler`)."""
    trials = study.get_trials(deepcopy=False)
    # The number the asked trial gets: the first enqueued one's, else the next.
    waiting = [t.number for t in trials if t.state == optuna.trial.TrialState.WAITING]
    study.sampler = trial_sampler(spec, min(waiting) if waiting else len(trials))
    return study.ask()


def unix(stamp: datetime) -> float:
    """Seconds since the epoch of a stored time (SQLite gives them naive; all are UTC)."""
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def deadline(parent: Job, spec: JobSpec) -> float | None:
    """The search's end as a Unix time: its start plus budget_seconds."""
    if spec.search is None or parent.started_at is None:
        return None
    return unix(parent.started_at) + spec.search.budget_seconds


def now_utc() -> datetime:
    return datetime.now(UTC)


class TrialReporter:
    """The job's DatabaseReporter, plus the trial's side: each epoch's selection metric goes
    to Optuna (`trial.report`), and the loop is asked to stop when Optuna prunes the trial
    or the search's budget is spent (`stop_reason` "pruned" or "search_budget")."""

    def __init__(
        self,
        inner: DatabaseReporter,
        trial: optuna.Trial,
        epochs: int,
        deadline: float | None,
    ) -> None:
        self.inner = inner
        self.trial = trial
        self.epochs = epochs
        self.deadline = deadline
        self.metric_name: str | None = None
        self._reason: str | None = None

    @property
    def stop_reason(self) -> str | None:
        return self._reason or self.inner.stop_reason

    def progress(self, fraction: float, *, epoch: int, step: int) -> None:
        self.inner.progress(fraction, epoch=epoch, step=step)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.inner.event(kind, message, data)

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
        self.inner.metric(name, value, step=step, epoch=epoch)
        if self.metric_name is None and name in SEARCH_METRICS:
            self.metric_name = name
        if name != self.metric_name:
            return
        self.trial.report(float(value), epoch)
        # The last epoch's value is the trial's result, not a reason to stop it.
        if epoch < self.epochs and self._reason is None and self.trial.should_prune():
            self._reason = "pruned"

    def should_stop(self) -> bool:
        if self._reason is None and self.deadline is not None and time.time() >= self.deadline:
            self._reason = "search_budget"
        return self._reason is not None or self.inner.should_stop()

    def flush(self) -> None:
        self.inner.flush()


def trial_reporter(inner: DatabaseReporter, job: Job, settings: Settings) -> TrialReporter:
    """The reporter of a trial job (one with a parent search)."""
    with session_scope() as session:
        parent = session.get_one(Job, job.parent_id)
        spec = JobSpec.model_validate(parent.spec)
        end = deadline(parent, spec)
        reference = session.scalar(
            select(Job.spec).where(Job.parent_id == parent.id, Job.trial_number == 0)
        )
    reference_epochs = (reference or {}).get("training", {}).get("epochs")
    study = open_study(parent.id, spec, settings, reference_epochs)
    trial_id = (job.trial or {})["trial_id"]
    # A trial whose schedule is still to be planned (the reference trial) is never pruned.
    epochs = int(job.spec.get("training", {}).get("epochs") or 0)
    return TrialReporter(inner, optuna.Trial(study, trial_id), epochs, end)
