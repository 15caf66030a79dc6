"""Where an engine training step spends its time, next to the hand-written loop's.

The parts of a step that differ between the engine (worker/kd/training/trainer.py,
tasks/tensor.py, tasks/tensor_job.py) and the hand-written loop (bench/loops.py) are timed
in isolation on one batch, each pair interleaved in 40 rounds of 50 calls (medians): the
loss (student forward, loss, backward), the teacher call, gradient clipping with the
parameter list each builds, and the running loss bookkeeping. The per-step differences
should add up to the measured (c) - (b) per step. This reaches into engine internals
(`tensor_job.build_objective`, `OnlineTeacher`, `Trainer.parameters`, `RunningSums`); if
they move, the result says so and the rest of the section still runs. A py-spy profile
of whole runs says the same at lower resolution.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.loops import build_student, tutorial_kd_loss
from bench.workloads import Workload

Pair = tuple[str, Callable[[], object], Callable[[], object], str]


def _pairs(workload: Workload) -> list[Pair]:
    from worker.kd.engine import prepare
    from worker.kd.spec import JobSpec
    from worker.kd.tasks.tensor_job import _new_student, build_objective
    from worker.kd.training.teacher_sources import online_teacher
    from worker.kd.training.trainer import RunningSums, Trainer, stack_parts

    spec = JobSpec.model_validate(workload.spec(2, cache_teacher=False))
    prepared: Any = prepare(spec, workload.teacher_path, workload.dataset_path)
    engine_student = _new_student(prepared)
    objective = build_objective(prepared, engine_student)
    own_student = build_student(workload)
    x, y = workload.x[: workload.batch_size], workload.y[: workload.batch_size]
    raw_teacher = torch.jit.load(str(workload.teacher_path), map_location="cpu").eval()
    with torch.no_grad():
        t = raw_teacher(x)
    temperature, alpha = workload.temperature, workload.alpha
    online = online_teacher(prepared.teacher, ())
    idx = torch.arange(len(x))

    def engine_loss() -> None:
        s = engine_student(x)
        objective.loss(s.float(), t.float(), y, {}, {}).total.backward()

    def own_loss() -> None:
        tutorial_kd_loss(own_student(x), t, y, temperature, alpha).backward()

    def engine_teacher() -> None:
        online(idx, x, False)

    def own_teacher() -> None:
        with torch.no_grad():
            raw_teacher(x)

    engine_loss()
    own_loss()
    trainer = Trainer.__new__(Trainer)  # only for its parameters() method
    trainer.student, trainer.objective = engine_student, objective.loss

    engine_parameters = trainer.parameters()  # the engine builds the list once per epoch

    def engine_clip() -> None:
        nn.utils.clip_grad_norm_(engine_parameters, 1.0)

    def own_clip() -> None:
        nn.utils.clip_grad_norm_(own_student.parameters(), 1.0)

    sums_a, sums_b = RunningSums(), RunningSums()
    parts = {"kd": t.sum().detach(), "ce": F.cross_entropy(t, y).detach()}
    total = parts["kd"] * alpha + parts["ce"] * (1 - alpha)
    holder = {"loss": 0.0}

    def engine_sums() -> None:
        names, values = stack_parts(total, parts)
        sums_a.add(names, values)
        sums_b.add(names, values)

    def own_sums() -> None:
        holder["loss"] += total.item()

    return [
        ("student forward + loss + backward", engine_loss, own_loss,
         "engine: CompositeLoss (kd and ce as separate terms, parts dict, .float() copies)"),
        ("teacher call (no_grad)", engine_teacher, own_teacher,
         "engine: OnlineTeacher -> teacher_forward -> TorchScriptTeacher wrapper"),
        ("gradient clipping", engine_clip, own_clip,
         "engine: the student's and the loss's parameters (the list built once per epoch)"),
        ("running loss bookkeeping", engine_sums, own_sums,
         "engine: the step's parts stacked once, added to the epoch's and the log window's sums"),
    ]  # fmt: skip


def step_anatomy(workload: Workload, rounds: int = 40, calls: int = 50) -> dict[str, Any]:
    try:
        pairs = _pairs(workload)
    except Exception as exc:  # engine internals moved: say so, keep the section going
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    timings: dict[str, tuple[list[float], list[float]]] = {p[0]: ([], []) for p in pairs}
    for _ in range(rounds):
        for name, engine_fn, own_fn, _ in pairs:
            for fn, sink in ((engine_fn, timings[name][0]), (own_fn, timings[name][1])):
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                sink.append((time.perf_counter() - start) / calls * 1e6)
    rows = []
    for name, _, _, note in pairs:
        engine_us = statistics.median(timings[name][0])
        own_us = statistics.median(timings[name][1])
        rows.append(
            {
                "part": name,
                "engine_us": engine_us,
                "handwritten_us": own_us,
                "delta_us": engine_us - own_us,
                "note": note,
            }
        )
    return {
        "available": True,
        "workload": workload.name,
        "rows": rows,
        "delta_us_total": sum(r["delta_us"] for r in rows),
    }
