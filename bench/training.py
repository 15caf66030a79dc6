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

import argparse
import gc
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench import anatomy, loops, workloads
from bench.common import (
    Block,
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


def measure(args: argparse.Namespace) -> Result:
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
    return {
        "threads": args.threads,
        "rounds": rounds,
        "epochs_per_run": epochs,
        "quick": args.quick,
        "cache": cache,
        "step_anatomy": parts,
        "load": load.stop(),
        "workloads": results,
    }


def rows(r: Result) -> list[Block]:
    tables: list[Block] = []
    for name, w in r["workloads"].items():
        variant_rows = [
            [
                v["label"],
                ms(v["epoch_s"]),
                f"{v['step_ms']:.3f} ms",
                ms(v.get("epoch_cpu_s")),
                f"{v['val_accuracy']:.3f}",
            ]
            for v in w["variants"].values()
        ]
        title = (
            f"**{name}**: {w['train_samples']} training samples, {w['val_samples']} validation, "
            f"{w['steps_per_epoch']} steps of 64 per epoch; student `{json.dumps(w['student'])}`; "
            f"teacher accuracy {w['teacher_val_accuracy']:.3f}."
        )
        header = ["variant", "epoch (wall)", "per step", "epoch (CPU)", "val accuracy"]
        tables.append(Table(header, variant_rows, title=title))
        ratio_rows = [
            [
                pair,
                x(row["median"], 3) + rng(row),
                x(row.get("cpu"), 3),
                "-" if row.get("target") is None else f"<= {row['target']:.2f}",
                verdict(row.get("met")),
            ]
            for pair, row in w["ratios"].items()
        ]
        tables.append(Table(["ratio", "wall, median (range)", "CPU", "target", ""], ratio_rows))
    anat = r.get("step_anatomy") or {}
    if anat.get("available"):
        tables.append(anatomy_table(anat))
    cache = r["cache"]
    calls = cache.get("teacher_calls") or {}
    cache_note = (
        f"Teacher-output cache probe: {cache['reason']} (teacher forward calls per epoch, "
        f"online {calls.get('online')}, cache {calls.get('cache')})."
    )
    if not cache["available"]:
        cache_note += " **(d) is not measured**: it is added once the engine stops calling the"
        cache_note += " teacher after the first epoch with `cache_teacher: true`."
    method = (
        f"{r['rounds']} rounds x {r['epochs_per_run']} epochs per run, "
        f"`torch.set_num_threads({r['threads']})` for every variant."
    )
    if anat and not anat.get("available"):
        tables.append(f"Step anatomy unavailable: {anat.get('reason')}")
    return [*tables, cache_note, method]


def anatomy_table(anat: dict[str, Any]) -> Table:
    anatomy_rows = [
        [
            row["part"],
            f"{row['engine_us']:.0f}",
            f"{row['handwritten_us']:.0f}",
            f"{row['delta_us']:+.0f}",
            row["note"],
        ]
        for row in anat["rows"]
    ]
    measured = anat.get("measured_c_minus_b_us_per_step")
    measured_cpu = anat.get("measured_c_minus_b_cpu_us_per_step")
    note = (
        f"Sum of delta: {anat['delta_us_total']:+.0f} us per step; measured (c) - (b): "
        + ("-" if measured is None else f"{measured:+.0f} us per step (wall)")
        + ("." if measured_cpu is None else f", {measured_cpu:+.0f} us (CPU).")
    )
    return Table(
        ["part", "engine", "hand-written", "delta", "what differs"],
        anatomy_rows,
        title=f"Step anatomy ({anat['workload']}, one batch, us per step, medians of "
        "interleaved rounds):",
        note=note,
    )


def targets(r: Result) -> list[Row]:
    summary = []
    for name, w in r["workloads"].items():
        for pair, row in w["ratios"].items():
            if row.get("target") is not None:
                summary.append(
                    [
                        f"1. epoch time {pair} ({name})",
                        f"<= {row['target']:.2f}",
                        x(row["median"], 3),
                        verdict(row["met"]),
                    ]
                )
        if not r["cache"]["available"]:
            summary.append(
                [f"1. epoch time d/a ({name})", "<= 1.10", "not measured (no cache yet)", "-"]
            )
    return summary


if __name__ == "__main__":
    run_section("training", measure, section_parser(__doc__ or ""))
