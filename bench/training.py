"""Section 1: training-loop epoch time, for the same student and data.

(a) student only, hand-written (cross-entropy); (b) hand-written online KD (the PyTorch
tutorial's loop: teacher forward every step); (c) Distillery's engine online
(`cache_teacher: false`); (d) the engine with the teacher-output cache
(`cache_teacher: true`), included once the engine really stops calling the teacher after
the first epoch (a probe run counts the teacher's forward calls per epoch); (e) the
hand-written KD loop with the teacher's logits computed once before training: the floor
for (d), which shows what the KD loss itself costs over (a).

Every round runs every variant once, in an order rotated by the round; an epoch's time is
the gap between two epoch ends (validation pass included, first epoch left out). Figures:
median epoch time per variant, and the median over rounds of the per-round ratios.

Run: .venv/bin/python -m bench.training [--quick] [--threads 1]
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench import anatomy, loops, workloads
from bench.common import (
    LoadMeter,
    log,
    median,
    paired_ratio,
    rotate,
    section_args,
    write_result,
)

TARGETS = {"c/b": 1.05, "d/a": 1.10}
LABELS = {
    "a": "(a) student only, hand-written",
    "b": "(b) online KD, hand-written",
    "c": "(c) engine, online",
    "d": "(d) engine, teacher-output cache",
    "e": "(e) KD from precomputed teacher logits, hand-written",
}


def probe_cache(workload: workloads.Workload, work: Path) -> dict[str, Any]:
    """Does `cache_teacher: true` stop the teacher's per-step forwards? Counted, not timed."""
    try:
        online = loops.engine(workload, 2, work / "probe-online", count_teacher=True)
        cached = loops.engine(workload, 2, work / "probe-cache", cache=True, count_teacher=True)
    except Exception as exc:  # the engine under construction: say so, measure the rest
        return {"available": False, "reason": f"probe failed: {type(exc).__name__}: {exc}"}
    calls = {"online": online.teacher_calls, "cache": cached.teacher_calls}
    if not cached.teacher_calls or not online.teacher_calls:
        return {"available": False, "reason": "no epochs counted", "teacher_calls": calls}
    available = cached.teacher_calls[-1] == 0 < online.teacher_calls[-1]
    reason = (
        "the teacher is not called after the first epoch with cache_teacher: true"
        if available
        else "the engine still calls the teacher every step with cache_teacher: true"
    )
    return {"available": available, "reason": reason, "teacher_calls": calls}


def run_variant(variant: str, workload: workloads.Workload, epochs: int, work: Path) -> loops.Run:
    gc.collect()
    if variant == "a":
        return loops.handwritten(workload, kd=False, epochs=epochs)
    if variant == "b":
        return loops.handwritten(workload, kd=True, epochs=epochs)
    if variant == "e":
        return loops.handwritten(workload, kd=True, epochs=epochs, cached=True)
    return loops.engine(workload, epochs, work / f"engine-{variant}", cache=variant == "d")


def ratio_rows(
    wall: dict[str, list[float]], cpu: dict[str, list[float]], pairs: list[str]
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for pair in pairs:
        top, bottom = pair.split("/")
        if top not in wall or bottom not in wall:
            continue
        row = paired_ratio(wall[top], wall[bottom])
        target = TARGETS.get(pair)
        rows[pair] = {
            **row,
            "cpu": paired_ratio(cpu[top], cpu[bottom])["median"],
            "target": target,
            "met": None if target is None else row["median"] <= target,
        }
    return rows


def bench_workload(
    workload: workloads.Workload, variants: list[str], rounds: int, epochs: int, work: Path
) -> dict[str, Any]:
    per_round: dict[str, list[float]] = {v: [] for v in variants}  # median epoch s per run
    cpu: dict[str, list[float]] = {v: [] for v in variants}  # the same in CPU seconds
    accuracy: dict[str, float] = {}
    for r in range(rounds):
        for variant in rotate(variants, r):
            run = run_variant(variant, workload, epochs, work)
            per_round[variant].append(median(run.epoch_seconds))
            cpu[variant].append(median(run.epoch_cpu_seconds))
            accuracy[variant] = run.accuracy
        log(
            f"  {workload.name} round {r + 1}/{rounds}: "
            + ", ".join(f"{v} {per_round[v][-1] * 1000:.1f} ms" for v in variants)
        )
    steps = -(-len(workload.x) // workload.batch_size)
    return {
        "train_samples": len(workload.x),
        "val_samples": len(workload.x_val),
        "steps_per_epoch": steps,
        "student": workload.student,
        "variants": {
            v: {
                "label": LABELS[v],
                "epoch_s": median(per_round[v]),
                "epoch_cpu_s": median(cpu[v]),
                "step_ms": median(per_round[v]) / steps * 1000,
                "runs": per_round[v],
                "val_accuracy": accuracy[v],
            }
            for v in variants
        },
        "ratios": ratio_rows(per_round, cpu, ["c/b", "d/a", "d/e", "e/a", "c/a", "b/a", "d/c"]),
    }


def main() -> None:
    args = section_args(__doc__ or "")
    torch.set_num_threads(args.threads)
    rounds, epochs = (2, 3) if args.quick else (7, 6)
    load = LoadMeter()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        made = {
            name: workloads.make(name, work / name, teacher_epochs=5) for name in ("mlp", "cnn")
        }
        cache = probe_cache(made["cnn"], work / "probe")
        log(f"teacher-output cache: {cache['reason']}")
        variants = ["a", "b", "c", "d", "e"] if cache["available"] else ["a", "b", "c", "e"]
        results = {}
        for name, workload in made.items():
            results[name] = bench_workload(workload, variants, rounds, epochs, work / name)
            results[name]["teacher_val_accuracy"] = workload.teacher_val_accuracy
        log("step anatomy: engine vs hand-written, part by part (mlp)")
        parts = anatomy.step_anatomy(made["mlp"], rounds=10 if args.quick else 40)
        if parts.get("available"):
            variants_mlp = results["mlp"]["variants"]
            steps = results["mlp"]["steps_per_epoch"]
            parts["measured_c_minus_b_us_per_step"] = (
                (variants_mlp["c"]["epoch_s"] - variants_mlp["b"]["epoch_s"]) / steps * 1e6
            )
            parts["measured_c_minus_b_cpu_us_per_step"] = (
                (variants_mlp["c"]["epoch_cpu_s"] - variants_mlp["b"]["epoch_cpu_s"]) / steps * 1e6
            )
    path = write_result(
        "training",
        {
            "threads": args.threads,
            "rounds": rounds,
            "epochs_per_run": epochs,
            "quick": args.quick,
            "cache": cache,
            "step_anatomy": parts,
            "load": load.stop(),
            "workloads": results,
        },
        args.out,
    )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
