"""Search under a budget: a job with `search` runs its trials as child jobs, driven from
the database, so that no worker waits on another.

- When a worker claims the search (the parent), it creates the Optuna study, enqueues the
  scratch candidate first (labelled data only), queues the first `parallel` trials as
  ordinary jobs and returns: the parent stays `running` with no worker and no lease.
- Each trial is a job whose spec is the parent's with the trial's params in it
  (`worker.search_space`). Its end, whatever it is, calls `advance`: the result goes to
  Optuna, the next trial is asked for and queued, or, when the trials or the budget are
  used up and none is left running, the search ends: the best trial's student becomes the
  parent's, and its report gains `search` and `trials`. A spec that names no `trials` is
  bounded by its budget alone: trials are queued for as long as the budget left fits one
  (`_fits`, from the measured durations of the trials that ended), MAX_TRIALS at most.
- `advance` takes the parent's row first (an update that locks it), so two trials that end
  at once move the search one after the other. The sweep calls it too for a search that
  has not moved for a lease's time, so an end lost with its worker is never waited on.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import session_scope
from app.errors import describe_validation_errors
from app.ids import new_id
from app.models import Artifact, File, Job, JobEvent, Metric
from app.queue import enqueue_job, queue_of
from app.schemas import TERMINAL_STATUSES, JobStatus
from app.storage import Storage, open_storage
from worker.fence import Fence
from worker.kd.spec import (
    MAX_TRIALS,
    SEARCH_METRICS,
    JobSpec,
    job_kind_of,
    with_training_defaults,
)
from worker.pipeline import (
    add_event,
    announce_end,
    claim,
    fail,
    heartbeat,
    job_result,
    transition,
)
from worker.pipeline import run_job as run_pipeline
from worker.search_space import (
    SearchContext,
    apply,
    is_scratch,
    own_params,
    scratch_params,
    suggest,
    teacher_pairable,
)
from worker.trials import TRIAL_STOPS, ask, deadline, now_utc, open_study, unix

log = logging.getLogger(__name__)

SEARCH, TRIAL = "search", "trial"
# A search that names no `trials` queues no more once this many failed and none completed.
FAILURES_TO_GIVE_UP = 3
TEXT_FORMATS = ("jsonl", "text")


def run_job(job_id: str, settings: Settings | None = None) -> None:
    """The worker's entry point for every job: a search is started here, any other job
    runs through the pipeline, and a trial's end moves its search on."""
    settings = settings or get_settings()
    with session_scope() as session:
        row = session.execute(select(Job.kind, Job.parent_id).where(Job.id == job_id)).first()
    if row is None:
        return
    kind, parent_id = row
    if kind == SEARCH:
        start(job_id, settings)
    elif parent_id is None:
        run_pipeline(job_id, settings)
    else:
        if not _drop_if_orphan(job_id, parent_id):
            run_pipeline(job_id, settings)
        advance(parent_id, settings)


def _drop_if_orphan(job_id: str, parent_id: str) -> bool:
    """A queued trial whose search has ended (cancelled, say) is cancelled, not run."""
    with session_scope() as session:
        status = session.scalar(select(Job.status).where(Job.id == parent_id))
        if status == JobStatus.running:
            return False
        message = f"Not run: its search ended ({status})."
        if transition(
            session, job_id, [JobStatus.queued], status=JobStatus.cancelled, finished_at=now_utc()
        ):
            add_event(session, job_id, "cancelled", message)
    return True


# Starting ------------------------------------------------------------------------------


def start(job_id: str, settings: Settings) -> None:
    """Claim the search, create its study and queue its first trials; then let go of it."""
    job = claim(job_id)
    if job is None:
        log.info("search %s is not queued; nothing to do", job_id)
        return
    fence = Fence(job.id, job.attempt)
    with heartbeat(fence, settings.heartbeat_seconds):  # creating a study can take a while
        queued = _begin(job, fence, settings)
    for child in queued:
        enqueue_job(child, queue_of(job.spec))
    announce_end(job_id)


def _begin(job: Job, fence: Fence, settings: Settings) -> list[str]:
    try:
        spec = JobSpec.model_validate(job.spec)
        context = search_context(job, spec)
        study = open_study(job.id, spec, settings)
        if context.labelled and not study.trials:
            study.enqueue_trial(scratch_params(context))
    except ValidationError as exc:
        fail(fence, "invalid_spec", describe_validation_errors(list(exc.errors())))
        return []
    queued: list[str] = []
    with session_scope() as session:
        running = transition(
            session,
            job.id,
            [JobStatus.validating],
            Job.attempt == fence.attempt,
            status=JobStatus.running,
            worker=None,
            heartbeat_at=None,
        )
        fence.ended.set()  # a running search holds no lease: its worker lets go of it
        if running:
            search = spec.search
            assert search is not None
            scratch = " (the first without the teacher)" if context.labelled else ""
            how_many = (
                f"as many trials as {search.budget_seconds} s fit (at most {MAX_TRIALS})"
                if search.trials is None
                else f"up to {search.trials} trials"
            )
            add_event(
                session,
                job.id,
                "running",
                f"Searching: {how_many}{scratch}, {search.parallel} at "
                f"once, within {search.budget_seconds} s.",
            )
            queued = _top_up(session, session.get_one(Job, job.id), spec, context, study, [])
        elif transition(
            session,
            job.id,
            [JobStatus.cancelling],
            status=JobStatus.cancelled,
            finished_at=now_utc(),
        ):
            add_event(session, job.id, "cancelled", "Cancelled before the search started.")
    return queued


def search_context(job: Job, spec: JobSpec, children: list[Job] | None = None) -> SearchContext:
    """What the search space depends on, read from the dataset's upload check, and the
    reference schedule the trials are drawn around (`reference_schedule`)."""
    labelled, arrays = True, spec.teacher.format != "hf_zip"
    teacher_format: str | None = spec.teacher.format
    if teacher_format == "auto":  # the format the upload check sniffed
        with session_scope() as session:
            teacher_file = session.get(File, spec.teacher.file_id)
        teacher_format = teacher_file.format if teacher_file is not None else None
    if spec.dataset.file_id is not None:
        with session_scope() as session:
            file = session.get(File, spec.dataset.file_id)
        details = file.details if file is not None else {}
        if "labeled" in details:  # the worker's deep check says
            labelled = bool(details["labeled"])
        elif "arrays" in details:  # NPZ, checked at upload
            labelled = "y" in details["arrays"]
        fmt = file.format if file is not None else spec.dataset.format
        arrays = arrays and fmt not in TEXT_FORMATS and spec.dataset.format not in TEXT_FORMATS
    epochs, learning_rate = reference_schedule(spec, children or [])
    return SearchContext(
        labelled=labelled,
        arrays=arrays,
        epochs=epochs,
        learning_rate=learning_rate,
        pairable=teacher_pairable(teacher_format),
        text_task=_teacher_task(spec),
    )


def _teacher_task(spec: JobSpec) -> str | None:
    """A Hugging Face teacher's task: the spec's, else the one its upload check read."""
    if spec.teacher.task is not None or job_kind_of(spec.model_dump()) != "transformer":
        return spec.teacher.task
    with session_scope() as session:
        file = session.get(File, spec.teacher.file_id)
    return None if file is None else (file.details or {}).get("task")


def reference_schedule(spec: JobSpec, children: list[Job]) -> tuple[int | None, float | None]:
    """The epochs and learning rate the search is centred on: what the budget planner
    chooses for this job, not TRAINING_DEFAULTS.

    The spec's own values where it states both. Otherwise the plan is made where the data,
    the student and a measured step are at hand: the search (the parent) holds no worker
    and loads no data, so its first trial, the reference (scratch for labelled data), is
    queued with the schedule left open and alone; its worker plans it at first claim, as
    any job (worker.kd.budget, fitted into the trial's budget_seconds, see
    `worker.search_space.apply`), and stores the plan on the trial. Every later trial
    draws its learning rate a decade either side of the planned one and its epochs
    between a quarter of the planned ones and all of them, so each fits the budget too.
    Before the reference is planned: (None, None), and no other trial is queued. A
    reference that ended without a plan (it failed first) leaves TRAINING_DEFAULTS."""
    stated = spec.training.epochs, spec.training.learning_rate
    if stated[0] is not None and stated[1] is not None:
        return stated
    reference = next((c for c in children if c.trial_number == 0), None)
    if reference is None:
        return None, None
    training = reference.spec.get("training", {})
    if training.get("epochs") is not None and training.get("learning_rate") is not None:
        return int(training["epochs"]), float(training["learning_rate"])
    if reference.status in TERMINAL_STATUSES:
        defaults = with_training_defaults(spec.training)
        return defaults.epochs, defaults.learning_rate
    return None, None


def _top_up(
    session: Session,
    parent: Job,
    spec: JobSpec,
    context: SearchContext,
    study: optuna.Study,
    children: list[Job],
) -> list[str]:
    """Queue trials until `parallel` run at once, `trials` were made (MAX_TRIALS when the
    spec names none: the budget bounds them), or the budget left would not fit one more;
    returns the new jobs' ids (to enqueue after the commit)."""
    search = spec.search
    assert search is not None
    active = sum(child.status not in TERMINAL_STATUSES for child in children)
    wanted = min(search.parallel - active, search.most_trials - len(children))
    if not context.planned:  # the reference trial alone, until its worker has planned it
        wanted = 0 if children else min(wanted, 1)
    if wanted <= 0 or not _fits(children, deadline(parent, spec)):
        return []
    if search.trials is None and _failing(children):
        return []
    queued: list[str] = []
    for _ in range(wanted):
        # The spec's own recipe is the first candidate after scratch (the first of all
        # without labels), once the schedule it runs at is known.
        if len(children) + len(queued) == (1 if context.labelled else 0):
            own = own_params(parent.spec.get("distillation") or {}, context)
            if own is not None:
                study.enqueue_trial(own)
        trial = ask(study, spec)
        params = suggest(trial, context)
        child = Job(
            id=new_id("job"),
            tenant_id=parent.tenant_id,
            kind=TRIAL,
            status=JobStatus.queued,
            spec=apply(parent.spec, params, context),
            parent_id=parent.id,
            trial_number=trial.number,
            trial={"trial_id": trial._trial_id, "params": params},
        )
        session.add(child)
        what = "scratch, no teacher" if is_scratch(params) else _describe(params)
        message = f"Trial {trial.number} queued ({what})."
        session.add(JobEvent(job_id=child.id, kind="queued", message=message))
        add_event(session, parent.id, "trial_queued", message, trial=trial.number, job=child.id)
        queued.append(child.id)
    return queued


def _describe(params: dict[str, Any]) -> str:
    schedule = (
        f"lr {params['learning_rate']:.2g}, {params['epochs']} epochs"
        if "epochs" in params
        else "the planned schedule"
    )
    return (
        f"{params['family']}, T {params['temperature']:.2g}, alpha {params['alpha']:.2f}, "
        + schedule
        + (", augmented" if params["augment"] else "")
    )


def _fits(children: list[Job], end: float | None) -> bool:
    """Whether one more trial fits in what is left of the budget: the median time of the
    trials that ran to the end (or, before any did, of those that ended at all)."""
    if end is None:
        return True
    left = end - time.time()
    if left <= 0:
        return False
    ended = [c for c in children if c.status in TERMINAL_STATUSES and c.started_at]
    complete = [c for c in ended if c.status == JobStatus.succeeded] or ended
    if not complete:
        return True
    seconds = [_seconds(c) for c in complete]
    return left >= statistics.median(seconds)


def _failing(children: list[Job]) -> bool:
    """Whether a search bounded by its budget alone should give up: FAILURES_TO_GIVE_UP
    trials failed (an error, not a pruning) and none ran to the end. A failure is mostly
    the job's, not the params' (a teacher that does not load, data that does not fit), and
    would otherwise repeat for as many trials as fast failures fit in the budget."""
    failed = sum(child.status == JobStatus.failed for child in children)
    succeeded = any(child.status == JobStatus.succeeded for child in children)
    return failed >= FAILURES_TO_GIVE_UP and not succeeded


def _seconds(job: Job) -> float:
    assert job.started_at is not None and job.finished_at is not None
    return (job.finished_at - job.started_at).total_seconds()


# Moving on -------------------------------------------------------------------------------


def advance(parent_id: str, settings: Settings) -> None:
    """Record every ended trial in the study, queue the next ones, or end the search."""
    queued: list[str] = []
    queue = None
    with session_scope() as session:
        if not _lock(session, parent_id):
            return  # the search has ended (or was cancelled): nothing moves it any more
        parent = session.get_one(Job, parent_id)
        spec = JobSpec.model_validate(parent.spec)
        queue = queue_of(parent.spec)
        study = open_study(parent_id, spec, settings)
        children = trials_of(session, parent_id)
        end = deadline(parent, spec)
        spent = end is not None and time.time() >= end
        if spent:
            _drop_queued(session, children)
        for child in children:
            if child.status in TERMINAL_STATUSES and "outcome" not in (child.trial or {}):
                _record(session, study, parent, child)
        if not spent:
            context = search_context(parent, spec, children)
            queued = _top_up(session, parent, spec, context, study, children)
        ended = sum(child.status in TERMINAL_STATUSES for child in children)
        parent.progress = _progress(parent, spec, ended)
        if not queued and ended == len(children):
            _finish(session, parent, spec, children, open_storage(settings))
    for child_id in queued:
        enqueue_job(child_id, queue)
    announce_end(parent_id)


def _progress(parent: Job, spec: JobSpec, ended: int) -> float:
    """The running search's progress: the trials ended out of those named, or, when the
    budget bounds the trials, the share of the budget spent."""
    search = spec.search
    assert search is not None
    if search.trials is not None:
        return ended / search.trials
    end = deadline(parent, spec)
    if end is None:
        return 0.0
    return min(1.0, max(0.0, 1 - (end - time.time()) / search.budget_seconds))


def _lock(session: Session, parent_id: str) -> bool:
    """Take the running search's row for this transaction (PostgreSQL locks the row,
    SQLite the database); False when the search is not running."""
    result = session.execute(
        update(Job)
        .where(Job.id == parent_id, Job.kind == SEARCH, Job.status == JobStatus.running)
        .values(updated_at=now_utc())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def trials_of(session: Session, parent_id: str) -> list[Job]:
    query = select(Job).where(Job.parent_id == parent_id).order_by(Job.trial_number)
    return list(session.scalars(query))


def _record(session: Session, study: optuna.Study, parent: Job, child: Job) -> None:
    """Tell Optuna how the trial ended and keep it on the child: outcome, value, epochs."""
    values = _selection_values(session, child.id)
    code = (child.error or {}).get("code")
    value: float | None = None
    if child.status == JobStatus.succeeded and values:
        outcome, value = "complete", _final_value(child, values)
        study.tell(child.trial_number or 0, value, skip_if_finished=True)
    else:
        pruned = child.status == JobStatus.cancelled and code in TRIAL_STOPS
        outcome = "pruned" if pruned else "failed"
        value = values[-1] if pruned and values else None
        state = optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.FAIL
        study.tell(child.trial_number or 0, state=state, skip_if_finished=True)
    trial = dict(child.trial or {})
    training = child.spec.get("training", {})
    planned = {k: training[k] for k in ("epochs", "learning_rate") if training.get(k) is not None}
    trial["params"] = {**planned, **trial.get("params", {})}  # the reference's, as planned
    child.trial = {
        **trial,
        "outcome": outcome,
        "value": value,
        "epochs_run": len(values),
    }
    shown = "" if value is None else f": {value:.4f}"
    add_event(
        session,
        parent.id,
        "trial_ended",
        f"Trial {child.trial_number} {outcome}{shown} after {len(values)} epochs.",
        trial=child.trial_number,
        job=child.id,
        outcome=outcome,
        value=value,
    )


def _selection_values(session: Session, job_id: str) -> list[float]:
    """The trial's selection metric, one value per epoch (the last written for an epoch
    that a resumed run wrote twice)."""
    rows = session.execute(
        select(Metric.name, Metric.epoch, Metric.value)
        .where(Metric.job_id == job_id, Metric.name.in_(SEARCH_METRICS))
        .order_by(Metric.id)
    ).all()
    name = next((n for n in SEARCH_METRICS if any(r.name == n for r in rows)), None)
    by_epoch = {row.epoch: row.value for row in rows if row.name == name}
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _final_value(child: Job, values: list[float]) -> float:
    """The selection metric of the student the trial kept: its last epoch's, or its best
    epoch's when early stopping restored the best weights."""
    if child.spec.get("training", {}).get("early_stopping_patience") is not None:
        return max(values)
    return values[-1]


def _drop_queued(session: Session, children: list[Job]) -> None:
    """The budget is spent: trials still waiting for a worker end without running."""
    message = TRIAL_STOPS["search_budget"]
    for child in children:
        if transition(
            session,
            child.id,
            [JobStatus.queued],
            status=JobStatus.cancelled,
            finished_at=now_utc(),
            error={"code": "search_budget", "message": message},
        ):
            add_event(session, child.id, "cancelled", message)
    session.flush()
    for child in children:
        session.refresh(child)


# Ending ----------------------------------------------------------------------------------


def _finish(
    session: Session, parent: Job, spec: JobSpec, children: list[Job], storage: Storage
) -> None:
    """Every trial has ended: the best complete one's student is the search's, or the
    search fails when none completed."""
    complete = [c for c in children if (c.trial or {}).get("outcome") == "complete"]
    if not complete:
        _fail_search(session, parent, children)
        return
    best = max(complete, key=lambda c: (c.trial["value"], -(c.trial_number or 0)))  # type: ignore[index]
    artifacts = list(session.scalars(select(Artifact).where(Artifact.job_id == best.id)))
    report_row = next(a for a in artifacts if a.name == "report.json")
    report = json.loads(storage.read_bytes("artifacts", report_row.path))
    report["search"] = search_summary(parent, spec, children, best)
    report["trials"] = [trial_row(child) for child in children]
    stored = {}
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        report_path.write_text(json.dumps(report, indent=2))
        for artifact in artifacts:
            source = report_path
            if artifact.name != "report.json":
                source = Path(tmp) / artifact.name
                storage.download("artifacts", artifact.path, source)
            stored[artifact.name] = storage.put_artifact(parent.id, artifact.name, source)
    for name, (relative, size, sha256) in stored.items():
        session.add(Artifact(job_id=parent.id, name=name, bytes=size, sha256=sha256, path=relative))
    result = job_result(report, sorted(stored))
    result["search"] = {"trials": len(children), "best_trial": best.trial_number}
    transition(
        session,
        parent.id,
        [JobStatus.running],
        status=JobStatus.succeeded,
        finished_at=now_utc(),
        progress=1.0,
        result=result,
    )
    value = best.trial["value"]  # type: ignore[index]
    add_event(
        session,
        parent.id,
        "succeeded",
        f"Done: trial {best.trial_number} of {len(children)} is the best "
        f"({value:.4f}); its student is this job's.",
        best_trial=best.trial_number,
    )


def _fail_search(session: Session, parent: Job, children: list[Job]) -> None:
    first = next((c.error for c in children if c.error and c.status == JobStatus.failed), None)
    if first is not None:
        reason = f" The first failure: {first['message']}"
    elif any((c.error or {}).get("code") == "search_budget" for c in children):
        reason = " The budget ran out first: raise search.budget_seconds or lower training.epochs."
    else:
        reason = ""
    message = f"None of the {len(children)} trials ran to the end.{reason}"
    transition(
        session,
        parent.id,
        [JobStatus.running],
        status=JobStatus.failed,
        finished_at=now_utc(),
        error={"code": "search_failed", "message": message},
    )
    add_event(session, parent.id, "failed", message)


def trial_row(child: Job) -> dict[str, Any]:
    trial = child.trial or {}
    return {
        "number": child.trial_number,
        "job_id": child.id,
        "status": trial.get("outcome", "running"),
        "params": trial.get("params", {}),
        "value": trial.get("value"),
        "epochs_run": trial.get("epochs_run", 0),
        "pruned": trial.get("outcome") == "pruned",
    }


def search_summary(parent: Job, spec: JobSpec, children: list[Job], best: Job) -> dict[str, Any]:
    """The report's `search` section."""
    assert spec.search is not None
    scratch = next((c for c in children if is_scratch((c.trial or {}).get("params", {}))), None)
    started = parent.started_at
    seconds = None if started is None else round(time.time() - unix(started), 1)
    return {
        "trials": len(children),
        "trials_cap": spec.search.trials,
        "best": trial_row(best),
        "scratch": None if scratch is None else trial_row(scratch),
        "outcomes": {
            outcome: sum((c.trial or {}).get("outcome") == outcome for c in children)
            for outcome in ("complete", "pruned", "failed")
        },
        "budget_seconds": spec.search.budget_seconds,
        "seconds": seconds,
        "parallel": spec.search.parallel,
        "metric": "selection-split " + SEARCH_METRICS[0],
    }


# The sweep's side --------------------------------------------------------------------------


def advance_stalled(settings: Settings) -> list[str]:
    """Move every running search that has not moved for a lease's time (a trial's end
    that died with its worker would otherwise never be heard); returns their ids."""
    cutoff = time.time() - settings.lease_seconds
    with session_scope() as session:
        rows = session.execute(
            select(Job.id, Job.updated_at).where(
                Job.kind == SEARCH, Job.status == JobStatus.running
            )
        ).all()
    stalled = [job_id for job_id, updated in rows if unix(updated) < cutoff]
    for job_id in stalled:
        advance(job_id, settings)
    return stalled
