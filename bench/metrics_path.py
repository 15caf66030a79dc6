"""Section 5: what progress and metric reporting costs the training loop.

The engine runs the same job with the worker's `DatabaseReporter` (writing to a fresh
SQLite database, WAL, as in the embedded default; the job's row exists, as in a real run)
and with a `MemoryReporter`, interleaved round by round. Figures: the ratio of median epoch
times [target <= 1.02], the database transactions per epoch (`DatabaseReporter.writes`,
counted between the first and the last epoch end) and the SQL statements per epoch
(reads for the cancel check included). Because a 2% difference is within what other
tenants of a shared machine do to wall times, the time spent inside the reporter's calls
is also added up in the same runs and divided by the epoch time: a direct measure of the
overhead that the neighbours barely move. An unthrottled variant (`flush_seconds=0`,
`cancel_poll_seconds=0`: a write per metric call, a read per step; tabular workload only)
shows what the throttle saves; it has no target.

Run: .venv/bin/python -m bench.metrics_path [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    LoadMeter,
    Result,
    Row,
    Table,
    log,
    median,
    ms,
    paired_ratio,
    rng,
    rotate,
    run_section,
    section_parser,
    verdict,
    x,
)

TARGET = 1.02


class CountingReporter:
    """Forwards to a reporter; adds up the time spent inside it, and notes that time and
    its write count after each event."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.spent = 0.0
        self.after_event: list[tuple[str, int, float]] = []

    def _timed(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.spent += time.perf_counter() - start

    def progress(self, fraction: float, *, epoch: int, step: int) -> None:
        self._timed(self.inner.progress, fraction, epoch=epoch, step=step)

    def metric(self, name: str, value: float, *, step: int, epoch: int) -> None:
        self._timed(self.inner.metric, name, value, step=step, epoch=epoch)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self._timed(self.inner.event, kind, message, data)
        self.after_event.append((kind, getattr(self.inner, "writes", 0), self.spent))

    def should_stop(self) -> bool:
        return bool(self._timed(self.inner.should_stop))

    def per_epoch(self) -> tuple[float, float]:
        """(writes, seconds inside the reporter) per epoch, between the first and last
        epoch end."""
        ends = [(w, s) for kind, w, s in self.after_event if kind == "epoch_end"]
        epochs = len(ends) - 1
        return (ends[-1][0] - ends[0][0]) / epochs, (ends[-1][1] - ends[0][1]) / epochs


def flush_anatomy(job_id: str, rounds: int, rows: int = 18) -> dict[str, Any]:
    """One epoch's flush (`rows` metric rows, an epoch_end event, the progress update, one
    commit) as DatabaseReporter.flush writes it (Core statements on one connection) vs the
    same statements through an ORM session with the event added as an object (the
    reporter's previous flush), interleaved; milliseconds, medians."""
    from sqlalchemy import insert, update

    from app.db import get_engine, session_scope
    from app.models import Job, JobEvent, Metric, utcnow

    def event() -> dict[str, Any]:
        return {"job_id": job_id, "kind": "epoch_end", "message": "Epoch 1/6",
                "data": {"epoch": 1}, "ts": utcnow()}  # fmt: skip

    def values() -> list[dict[str, Any]]:
        return [
            {"job_id": job_id, "name": "train_loss", "step": i, "epoch": 1, "value": 0.5}
            for i in range(rows)
        ]

    def session() -> None:
        with session_scope() as orm:
            orm.add(JobEvent(**event()))
            orm.execute(insert(Metric), values())
            orm.execute(update(Job).where(Job.id == job_id).values(progress=0.5))

    def core() -> None:
        with get_engine().begin() as connection:
            connection.execute(insert(JobEvent), [event()])
            connection.execute(insert(Metric), values())
            connection.execute(update(Job).where(Job.id == job_id).values(progress=0.5))

    variants = {"Core on one connection (as DatabaseReporter.flush)": core,
                "ORM session, event as an object (the previous flush)": session}  # fmt: skip
    spent: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in rotate(list(variants), r):
            start = time.perf_counter()
            for _ in range(5):
                variants[name]()
            spent[name].append((time.perf_counter() - start) / 5 * 1000)
    return {"rows": rows, "ms": {name: median(s) for name, s in spent.items()}}


def measure(args: argparse.Namespace) -> Result:
    torch.set_num_threads(args.threads)
    rounds, epochs = (2, 3) if args.quick else (9, 5)
    load = LoadMeter()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        for key in [k for k in os.environ if k.startswith("DISTILLERY_")]:
            del os.environ[key]
        os.environ["DISTILLERY_DATA_DIR"] = str(work / "data")
        from sqlalchemy import event

        from app.db import get_engine, session_scope
        from app.ids import new_id
        from app.migrate import upgrade_head
        from app.models import Job, Tenant
        from bench import loops, workloads
        from worker.fence import Fence
        from worker.kd.training.reporting import MemoryReporter
        from worker.reporter import DatabaseReporter

        upgrade_head()
        with session_scope() as session:
            session.add(Tenant(id="ten_bench", name="bench"))
        statements = {"n": 0}

        def count(*_: Any) -> None:
            statements["n"] += 1

        event.listen(get_engine(), "before_cursor_execute", count)

        def new_job() -> str:
            job_id = new_id("job")
            with session_scope() as session:
                session.add(Job(id=job_id, tenant_id="ten_bench", status="running", spec={}))
            return job_id

        all_variants: dict[str, tuple[float, float] | None] = {
            "memory": None,
            "database": (1.0, 0.5),  # the defaults: DISTILLERY_PROGRESS_FLUSH/CANCEL_POLL
            "unthrottled": (0.0, 0.0),
        }
        results: dict[str, Any] = {}
        for name in ("mlp", "cnn"):
            variants = {
                k: v for k, v in all_variants.items() if name == "mlp" or k != "unthrottled"
            }
            workload = workloads.make(name, work / name, teacher_epochs=1)
            epoch_s: dict[str, list[float]] = {v: [] for v in variants}
            epoch_cpu: dict[str, list[float]] = {v: [] for v in variants}
            writes: dict[str, list[float]] = {v: [] for v in variants if v != "memory"}
            sql: dict[str, list[float]] = {v: [] for v in variants if v != "memory"}
            inside: dict[str, list[float]] = {v: [] for v in variants}  # s per epoch
            for r in range(rounds):
                for variant in rotate(list(variants), r):
                    gc.collect()
                    throttle = variants[variant]
                    inner: Any = (
                        MemoryReporter()
                        if throttle is None
                        else DatabaseReporter(Fence(new_job(), 0), *throttle)
                    )
                    reporter = CountingReporter(inner)
                    before = statements["n"]
                    run = loops.engine(workload, epochs, work / "out", reporter=reporter)
                    epoch_s[variant].append(median(run.epoch_seconds))
                    epoch_cpu[variant].append(median(run.epoch_cpu_seconds))
                    written, spent = reporter.per_epoch()
                    inside[variant].append(spent)
                    if throttle is not None:
                        writes[variant].append(written)
                        sql[variant].append((statements["n"] - before) / epochs)
                log(
                    f"  {name} round {r + 1}/{rounds}: "
                    + ", ".join(f"{v} {epoch_s[v][-1] * 1000:.1f} ms" for v in variants)
                )
            ratios = {
                variant: {
                    **paired_ratio(epoch_s[variant], epoch_s["memory"]),
                    "cpu": paired_ratio(epoch_cpu[variant], epoch_cpu["memory"])["median"],
                    "inside_pct": 100
                    * median(
                        [i / e for i, e in zip(inside[variant], epoch_s[variant], strict=True)]
                    ),
                }
                for variant in variants
                if variant != "memory"
            }
            results[name] = {
                "train_samples": len(workload.x),
                "steps_per_epoch": -(-len(workload.x) // workload.batch_size),
                "epoch_s": {v: median(s) for v, s in epoch_s.items()},
                "epoch_cpu_s": {v: median(s) for v, s in epoch_cpu.items()},
                "runs": epoch_s,
                "ratio_vs_memory": ratios,
                "overhead_pct": (ratios["database"]["median"] - 1) * 100,
                "inside_ms_per_epoch": {v: median(i) * 1000 for v, i in inside.items()},
                "inside_pct": ratios["database"]["inside_pct"],
                "met": ratios["database"]["inside_pct"] <= (TARGET - 1) * 100,
                "writes_per_epoch": {v: median(w) for v, w in writes.items()},
                "statements_per_epoch": {v: median(s) for v, s in sql.items()},
            }
        flush = flush_anatomy(new_job(), 10 if args.quick else 40)
    return {
        "threads": args.threads,
        "rounds": rounds,
        "epochs_per_run": epochs,
        "quick": args.quick,
        "target_ratio": TARGET,
        "database": "SQLite (WAL, synchronous=NORMAL), the embedded default",
        "load": load.stop(),
        "flush": flush,
        "workloads": results,
    }


def rows(r: Result) -> list[Table]:
    table_rows = []
    for name, w in r["workloads"].items():
        for variant, row in w["ratio_vs_memory"].items():
            label = (
                "DatabaseReporter (defaults: flush 1 s, cancel poll 0.5 s)"
                if variant == "database"
                else "DatabaseReporter unthrottled (flush 0, cancel poll 0)"
            )
            table_rows.append(
                [
                    name,
                    label,
                    ms(w["epoch_s"]["memory"]),
                    ms(w["epoch_s"][variant]),
                    x(row["median"], 3) + rng(row),
                    x(row.get("cpu"), 3),
                    f"{w['inside_ms_per_epoch'][variant]:.2f} ms = {row['inside_pct']:.2f}%"
                    if "inside_pct" in row
                    else "-",
                    x(w["writes_per_epoch"][variant], 1),
                    x(w["statements_per_epoch"][variant], 1),
                    f"<= {100 * (r['target_ratio'] - 1):.0f}%: {verdict(w['met'])}"
                    if variant == "database"
                    else "-",
                ]
            )
    header = [
        "workload",
        "reporter",
        "epoch, MemoryReporter",
        "epoch, this",
        "ratio (wall)",
        "ratio (CPU)",
        "inside the reporter, per epoch",
        "writes / epoch",
        "SQL statements / epoch",
        "target",
    ]
    memory = ", ".join(
        f"{w['inside_ms_per_epoch']['memory']:.3f} ms ({n})" for n, w in r["workloads"].items()
    )
    note = (
        f"{r['database']}; {r['rounds']} rounds x {r['epochs_per_run']} epochs. The target is "
        "judged on the time inside the reporter (the A/B ratios, whose range shows the noise, "
        f"agree within it); the MemoryReporter spends {memory} per epoch."
    )
    if r.get("flush"):
        note += (
            f"\n\nOne epoch's flush ({r['flush']['rows']} metric rows, the epoch_end event, the "
            "progress update, one commit), interleaved: "
            + ", ".join(f"{n} {v:.2f} ms" for n, v in r["flush"]["ms"].items())
            + "."
        )
    return [Table(header, table_rows, note=note)]


def targets(r: Result) -> list[Row]:
    return [
        [
            f"5. reporting overhead, DatabaseReporter ({name})",
            f"<= {100 * (r['target_ratio'] - 1):.0f}% of epoch",
            f"{w['inside_pct']:.2f}% inside the reporter; A/B wall ratio "
            f"{w['ratio_vs_memory']['database']['median']:.3f}",
            verdict(w["met"]),
        ]
        for name, w in r["workloads"].items()
    ]


if __name__ == "__main__":
    run_section("metrics_path", measure, section_parser(__doc__ or ""))
