"""Budget and recipe, chosen together on tasks that cannot be overfitted (issue 11).

Each candidate is a budget rule (worker.kd.budget.BudgetRule: learning rate, batch, steps
scaled to data size and student capacity, schedule, weight decay) paired with a recipe.
On every tuning task and seed it trains the task's student through the real engine
(`prepare`, then `apply_plan` exactly as a job will, then `distill`), and the same student
from scratch (labels only, no teacher, no augmentation) at the same planned budget and
seed. The chosen candidate has the best mean gain over scratch among those whose mean
student accuracy is within `ACCURACY_SLACK` of the best (a rule cannot win by starving its
scratch baseline). Only then does it run on the held-out tasks, which nothing chooses from,
beside the pre-planner defaults (20 epochs, batch 64, lr 1e-3) with the same recipe.

Run: .venv/bin/python -m bench.suite [--quick] [--jobs N] [--out bench/results/suite.json]
(`--quick`: one seed, a fifth of the steps, no BENCHMARKS.md rewrite; a smoke run.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import worker.kd.runner
from bench.suite_tasks import HELD_OUT, TUNING, Task, tasks
from worker.kd.budget import DEFAULT_RULE, BudgetRule, plan_job
from worker.kd.engine import Prepared, distill, prepare
from worker.kd.reporting import MemoryReporter
from worker.kd.spec import DEFAULT_RECIPE, JobSpec, TrainingSpec
from worker.kd.students import build_student

TEXTBOOK: dict[str, Any] = {"temperature": 4.0, "alpha": 0.7}
SCRATCH: dict[str, Any] = {"alpha": 0.0}
TODAY = BudgetRule(fixed_epochs=20, batch_size=64, learning_rate=1e-3)  # the old defaults
RULES: dict[str, BudgetRule] = {
    "20 epochs, batch 64, lr 1e-3 (before)": TODAY,
    "steps 3k*sqrt(n/1k)*cap, lr 1e-2, batch 32, warmup_cosine": DEFAULT_RULE,
    "same, lr 3e-3": DEFAULT_RULE.with_(learning_rate=3e-3),
    "same, constant lr": DEFAULT_RULE.with_(schedule="constant"),
    "same, no capacity factor": DEFAULT_RULE.with_(capacity_exponent=0.0),
    "short: steps 1k*sqrt(n/1k)*cap": DEFAULT_RULE.with_(steps_per_1k=1000),
}
DEFAULT_NAME, TEXTBOOK_NAME = "default (mixup, T=4, a=0.9)", "textbook (T=4, a=0.7)"
RECIPES: dict[str, dict[str, Any]] = {DEFAULT_NAME: DEFAULT_RECIPE, TEXTBOOK_NAME: TEXTBOOK}
# (rule, recipe) pairs measured on the tuning tasks; runs whose planned training section
# comes out the same (e.g. the capacity factor on a large student) are run once.
CANDIDATES: list[tuple[str, str]] = [
    *[(rule, DEFAULT_NAME) for rule in RULES],
    *[(rule, TEXTBOOK_NAME) for rule in list(RULES)[:2]],
]
ACCURACY_SLACK = 0.01
HEADROOM = 0.05
MARKERS = ("<!-- suite:start -->", "<!-- suite:end -->")


@dataclass
class Files:
    teacher: Path
    data: Path  # the transfer set (with y when labelled), x_val/y_val = the test set
    scratch: Path  # what the scratch student trains on, same test set


def _no_plot(path: Path, *args: Any, **kwargs: Any) -> Path:
    path.write_bytes(b"")
    return path


def write_files(task: Task, root: Path) -> Files:
    teacher = root / "teacher.pt"
    torch.jit.script(task.teacher()).save(str(teacher))
    data, scratch = root / "data.npz", root / "scratch.npz"
    test = {"x_val": task.x_test, "y_val": task.y_test}
    np.savez(data, x=task.x, **({"y": task.y} if task.y is not None else {}), **test)
    sx, sy = task.scratch_data()
    np.savez(scratch, x=sx, y=sy, **test)
    return Files(teacher, data, scratch)


def student_parameters(prepared: Prepared) -> int:
    with torch.device("meta"):
        model: nn.Module = build_student(
            prepared.spec.student, prepared.input_shape, prepared.num_classes
        )
    return sum(p.numel() for p in model.parameters())


def run_one(
    task: Task, files: Files, rule: BudgetRule, recipe: dict[str, Any], seed: int,
    work: Path, cache: dict[str, dict[str, Any]], *, baseline: bool = False,
    steps_scale: float = 1.0,
) -> dict[str, Any]:  # fmt: skip
    """One engine run with the training section planned by `rule`, as a job gets it (or
    the earlier run of the same recipe, planned section and seed on this task)."""
    scratch = recipe is SCRATCH
    spec = JobSpec.model_validate({
        "teacher": {"file_id": "teacher"}, "dataset": {"file_id": "data"},
        "student": task.student, "distillation": recipe, "training": {"seed": seed},
        "baseline": baseline,
    })  # fmt: skip
    prepared = prepare(spec, files.teacher, files.scratch if scratch else files.data)
    assert isinstance(prepared, Prepared)
    if steps_scale != 1.0:
        rule = rule.with_(steps_per_1k=max(1, round(rule.steps_per_1k * steps_scale)))
    n_params = student_parameters(prepared)
    plan = plan_job(spec, len(prepared.data.x_train), n_params, None, rule)
    key = json.dumps([recipe, plan.training, baseline], sort_keys=True)
    if key in cache:
        return cache[key]
    prepared.spec = spec.model_copy(update={"training": TrainingSpec.model_validate(plan.training)})
    started = time.monotonic()
    report = distill(prepared, work, MemoryReporter()).report
    row = {
        "student": report["student"]["accuracy"],
        "teacher": report["teacher"]["accuracy"],
        "engine_baseline": None if report["baseline"] is None else report["baseline"]["accuracy"],
        "epochs": report["epochs"], "steps": report["steps"], "params": n_params,
        "seconds_per_step": report["train_seconds"] / max(report["steps"], 1),
        "seconds": time.monotonic() - started, "plan": plan.explanation,
    }  # fmt: skip
    cache[key] = row
    return row


def unit(
    index: int, seed: int, candidates: list[tuple[str, str]], scale: float, root: Path
) -> list[dict[str, Any]]:
    """Every candidate and its scratch student on one task with one seed (one process)."""
    torch.set_num_threads(1)
    # The curves plot changes no accuracy and costs seconds per run: not drawn here.
    worker.kd.runner.plot_curves = _no_plot  # type: ignore[assignment]
    task = TASKS[index][1]
    files = task_files(root, index)
    work = Path(tempfile.mkdtemp(dir=root))
    cache: dict[str, dict[str, Any]] = {}
    rows = []
    for rule_name, recipe_name in candidates:
        rule = RULES[rule_name]
        run = run_one(task, files, rule, RECIPES[recipe_name], seed, work, cache,
                      steps_scale=scale)  # fmt: skip
        scratch = run_one(task, files, rule, SCRATCH, seed, work, cache, steps_scale=scale)
        rows.append({
            "task": task.name, "kind": task.kind, "labelled": task.labelled,
            "rule": rule_name, "recipe": recipe_name, "seed": seed,
            "teacher": run["teacher"], "student": run["student"], "scratch": scratch["student"],
            "epochs": run["epochs"], "steps": run["steps"], "params": run["params"],
            "scratch_steps": scratch["steps"], "ms_per_step": 1e3 * run["seconds_per_step"],
            "plan": run["plan"],
        })  # fmt: skip
    return rows


def task_files(root: Path, index: int) -> Files:
    folder = root / f"task{index}"
    return Files(folder / "teacher.pt", folder / "data.npz", folder / "scratch.npz")


def build_files(index: int, root: Path) -> str:
    """Train the task's teacher and write its files (once per task, before any unit)."""
    torch.set_num_threads(1)
    (root / f"task{index}").mkdir(parents=True, exist_ok=True)
    write_files(TASKS[index][1], root / f"task{index}")
    return TASKS[index][1].name


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-seed rows to one row per (task, rule, recipe): means over seeds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["rule"], row["recipe"]), []).append(row)
    out = []
    for mine in groups.values():
        mine.sort(key=lambda r: r["seed"])
        student = statistics.mean(r["student"] for r in mine)
        scratch = statistics.mean(r["scratch"] for r in mine)
        teacher = mine[0]["teacher"]
        out.append({
            **{k: mine[0][k] for k in ("task", "kind", "labelled", "rule", "recipe", "epochs",
                                       "steps", "params", "scratch_steps", "plan")},
            "seeds": [r["seed"] for r in mine], "teacher": teacher, "student": student,
            "scratch": scratch, "gain": student - scratch,
            "gains": [r["student"] - r["scratch"] for r in mine],
            "headroom": teacher - scratch,
            "ms_per_step": statistics.mean(r["ms_per_step"] for r in mine),
        })  # fmt: skip
    return out


def choose(rows: list[dict[str, Any]]) -> tuple[tuple[str, str], dict[str, dict[str, float]]]:
    """The candidate with the best mean gain among those near the best mean accuracy."""
    means: dict[str, dict[str, float]] = {}
    for rule, recipe in CANDIDATES:
        mine = [r for r in rows if (r["rule"], r["recipe"]) == (rule, recipe)]
        means[f"{rule} | {recipe}"] = {
            "student": statistics.mean(r["student"] for r in mine),
            "gain": statistics.mean(r["gain"] for r in mine),
            "worst_gain": min(r["gain"] for r in mine),
        }
    best_accuracy = max(m["student"] for m in means.values())
    eligible = [k for k, m in means.items() if m["student"] >= best_accuracy - ACCURACY_SLACK]
    best = max(eligible, key=lambda k: (means[k]["gain"], means[k]["student"]))
    rule, recipe = best.split(" | ")
    return (rule, recipe), means


TASKS = tasks()
PARTIAL = Path(tempfile.gettempdir()) / "bench-suite-rows.json"


def run_units(
    pool: Any, units: list[tuple[int, int, list[tuple[str, str]]]], scale: float, root: Path,
    started: float,
) -> list[dict[str, Any]]:  # fmt: skip
    rows: list[dict[str, Any]] = []
    jobs = [pool.apply_async(unit, (i, seed, cands, scale, root)) for i, seed, cands in units]
    for job in jobs:
        for row in job.get():
            rows.append(row)
            _print(row, time.monotonic() - started)
        # Every finished row, kept where a crash later in the run cannot lose it.
        PARTIAL.write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/suite.json"))
    parser.add_argument("--quick", action="store_true", help="one seed, 1/5 of the steps")
    parser.add_argument("--jobs", type=int, default=2, help="processes (one thread each)")
    args = parser.parse_args()
    tuning_seeds, held_out_seeds = ([0], [0]) if args.quick else ([0, 1], [0, 1, 2])
    scale = 0.2 if args.quick else 1.0
    started = time.monotonic()
    tuning = [i for i, (split, _) in enumerate(TASKS) if split == TUNING]
    held_out = [i for i, (split, _) in enumerate(TASKS) if split == HELD_OUT]
    with (
        tempfile.TemporaryDirectory() as tmp,
        multiprocessing.get_context("fork").Pool(args.jobs) as pool,
    ):
        root = Path(tmp)
        for name in pool.starmap(build_files, [(i, root) for i in range(len(TASKS))]):
            print(f"[{time.monotonic() - started:6.0f}s] teacher trained: {name}", flush=True)
        units = [(i, seed, CANDIDATES) for seed in tuning_seeds for i in tuning]
        tuning_rows = aggregate(run_units(pool, units, scale, root, started))
        (rule, recipe), means = choose(tuning_rows)
        print(f"chosen: {rule} | {recipe}", flush=True)
        checked = list(dict.fromkeys([(rule, recipe), (next(iter(RULES)), recipe)]))
        units = [(i, seed, checked) for seed in held_out_seeds for i in held_out]
        held_rows = aggregate(run_units(pool, units, scale, root, started))
    result = {
        "section": "suite", "quick": args.quick, "seconds": time.monotonic() - started,
        "jobs": args.jobs, "tuning_seeds": tuning_seeds, "held_out_seeds": held_out_seeds,
        "tasks": {split: [t.name for s, t in TASKS if s == split]
                  for split in (TUNING, HELD_OUT)},
        "rules": {name: asdict(rule) for name, rule in RULES.items()},
        "recipes": RECIPES, "chosen": {"rule": rule, "recipe": recipe,
                                       "budget_rule": asdict(RULES[rule])},
        "means": means, "tuning": tuning_rows, "held_out": held_rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.quick:
        render(result)


def _print(row: dict[str, Any], elapsed: float) -> None:
    print(
        f"[{elapsed:6.0f}s] {row['task'][:40]:40s} {row['rule'][:34]:34s} {row['recipe'][:12]:12s}"
        f" student {row['student']:.4f} scratch {row['scratch']:.4f} gain {row['gain']:+.4f}"
        f" teacher {row['teacher']:.4f} steps {row['steps']} ({row['ms_per_step']:.2f} ms/step)",
        flush=True,
    )


def render(
    result: dict[str, Any], path: Path = Path(__file__).parents[1] / "BENCHMARKS.md"
) -> None:
    """Write the suite's section between its markers at the end of BENCHMARKS.md."""
    text = path.read_text()
    block = "\n".join([MARKERS[0], *section_lines(result), MARKERS[1]])
    if MARKERS[0] in text:
        head, rest = text.split(MARKERS[0], 1)
        text = head + block + rest.split(MARKERS[1], 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def section_lines(result: dict[str, Any]) -> list[str]:
    chosen = result["chosen"]
    lines = [
        "## Budget and recipe on held-out tasks (issue 11): chosen by measurement", "",
        "Written by `python -m bench.suite` (`make`-free; "
        f"{result['seconds'] / 60:.0f} min here on a shared 2-core machine).", "",
        f"Chosen default: **{chosen['rule']}** with the **{chosen['recipe']}** recipe "
        "(`worker/kd/budget.py: DEFAULT_RULE`, `worker/kd/spec.py: DEFAULT_RECIPE`).", "",
        "### Tuning tasks (the default is chosen here)", "",
        "| task | rule | recipe | teacher | scratch | student | gain | steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for r in result["tuning"]:
        mark = (
            " **(chosen)**"
            if (r["rule"], r["recipe"]) == (chosen["rule"], chosen["recipe"])
            else ""
        )
        lines.append(
            f"| {r['task']} | {r['rule']}{mark} | {r['recipe']} | {r['teacher']:.4f} | "
            f"{r['scratch']:.4f} | {r['student']:.4f} | {r['gain']:+.4f} | {r['steps']} |"
        )
    lines += ["", "| rule | recipe | mean student | mean gain | worst task gain |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, m in result["means"].items():
        lines.append(f"| {name} | {m['student']:.4f} | {m['gain']:+.4f} | {m['worst_gain']:+.4f} |")
    lines += [
        "", "### Held-out tasks (never used to choose)", "",
        "| task | rule | student | scratch | gain | gain per seed | teacher | headroom "
        "| steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for r in result["held_out"]:
        seeds = " ".join(f"{g:+.3f}" for g in r["gains"])
        lines.append(
            f"| {r['task']} | {r['rule']} | {r['student']:.4f} | {r['scratch']:.4f} | "
            f"{r['gain']:+.4f} | {seeds} | {r['teacher']:.4f} | {r['headroom']:+.4f} | "
            f"{r['steps']} |"
        )
    return lines


if __name__ == "__main__":
    main()
