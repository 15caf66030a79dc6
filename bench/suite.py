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
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import worker.kd.tasks.tensor_job
from bench.suite_tasks import HELD_OUT, TUNING, Task, tasks
from worker.kd.budget import BudgetRule, plan_job
from worker.kd.engine import distill, prepare
from worker.kd.jobs import Prepared
from worker.kd.spec import DEFAULT_RECIPE, JobSpec, TrainingSpec
from worker.kd.students import build_student
from worker.kd.training.reporting import MemoryReporter

TEXTBOOK: dict[str, Any] = {"temperature": 4.0, "alpha": 0.7}
SCRATCH: dict[str, Any] = {"alpha": 0.0}
TODAY = BudgetRule(fixed_epochs=20, batch_size=64, learning_rate=1e-3)  # the old defaults
# The candidates' base, spelled out (not DEFAULT_RULE, which follows whichever wins).
BASE = BudgetRule(
    learning_rate=1e-2, batch_size=32, steps_per_1k=3000, data_exponent=0.5,
    capacity_params=5000, capacity_exponent=0.25, max_capacity_factor=2.0, min_epochs=5,
    max_epochs=500, schedule="warmup_cosine", warmup_fraction=0.05, weight_decay=0.01,
)  # fmt: skip
RULES: dict[str, BudgetRule] = {
    "20 epochs, batch 64, lr 1e-3 (before)": TODAY,
    "steps 3k*sqrt(n/1k)*cap, lr 1e-2, batch 32, warmup_cosine": BASE,
    "same, no capacity factor": BASE.with_(capacity_exponent=0.0),
    "short: steps 1k*sqrt(n/1k)*cap": BASE.with_(steps_per_1k=1000),
}
DEFAULT_NAME, TEXTBOOK_NAME = "default (mixup, T=4, a=0.9)", "textbook (T=4, a=0.7)"
RECIPES: dict[str, dict[str, Any]] = {DEFAULT_NAME: DEFAULT_RECIPE, TEXTBOOK_NAME: TEXTBOOK}
# (rule, recipe) pairs measured on the tuning tasks; runs whose planned training section
# comes out the same (e.g. the capacity factor on a large student) are run once.
CANDIDATES: list[tuple[str, str]] = [
    *[(rule, DEFAULT_NAME) for rule in RULES if rule != "same, no capacity factor"],
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
    arrays: dict[str, Any] = {"x": task.x, "x_val": task.x_test, "y_val": task.y_test}
    if task.y is not None:
        arrays["y"] = task.y
    np.savez(data, **arrays)
    sx, sy = task.scratch_data()
    np.savez(scratch, **{**arrays, "x": sx, "y": sy})
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
    worker.kd.tasks.tensor_job.plot_curves = _no_plot
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


def build_files(index: int, root: Path, cache: Path | None) -> str:
    """Train the task's teacher and write its files (once per task, before any unit), or
    copy them from `cache`, where an earlier run of this same code left them (teachers are
    trained seeded on one thread, so the files are the same)."""
    torch.set_num_threads(1)
    folder = root / f"task{index}"
    folder.mkdir(parents=True, exist_ok=True)
    cached = None if cache is None else cache / f"task{index}"
    if cached is not None and (cached / "scratch.npz").exists():
        for name in ("teacher.pt", "data.npz", "scratch.npz"):
            shutil.copyfile(cached / name, folder / name)
        return TASKS[index][1].name + " (cached)"
    write_files(TASKS[index][1], folder)
    if cached is not None:
        shutil.copytree(folder, cached, dirs_exist_ok=True)
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
RAW: list[dict[str, Any]] = []  # this process's per-seed rows, as they finish
PARTIAL = Path(tempfile.gettempdir()) / f"bench-suite-rows-{os.getpid()}.json"


def run_units(
    pool: Any, units: list[tuple[int, int, list[tuple[str, str]]]], scale: float, root: Path,
    started: float,
) -> list[dict[str, Any]]:  # fmt: skip
    rows: list[dict[str, Any]] = []
    jobs = [pool.apply_async(unit, (i, seed, cands, scale, root)) for i, seed, cands in units]
    for job in jobs:
        finished = job.get()
        for row in finished:
            _print(row, time.monotonic() - started)
        rows += finished
        RAW.extend(finished)
        # Every finished row, kept where a crash later in the run cannot lose it.
        PARTIAL.write_text(json.dumps(RAW, indent=1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/suite.json"))
    parser.add_argument("--quick", action="store_true", help="one seed, 1/5 of the steps")
    parser.add_argument("--jobs", type=int, default=2, help="processes (one thread each)")
    parser.add_argument("--cache", type=Path, help="keep (and reuse) teachers and data here")
    parser.add_argument(
        "--stage", choices=("all", "tuning", "held-out"), default="all",
        help="tuning: choose and stop; held-out: check --candidate (rule|recipe) only",
    )  # fmt: skip
    parser.add_argument("--candidate", help="for --stage held-out: 'rule | recipe'")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds")
    parser.add_argument("--tasks", type=int, nargs="+", help="only these task indices")
    parser.add_argument(
        "--assemble", type=Path, nargs="+", metavar="ROWS",
        help="build the result from the per-seed rows files of stages run side by side",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, help="with --assemble: the wall-clock time")
    parser.add_argument("--note", default="", help="with --assemble: a sentence for the method")
    parser.add_argument("--render", type=Path, help="only rewrite BENCHMARKS.md from this JSON")
    args = parser.parse_args()
    if args.render:
        render(json.loads(args.render.read_text()))
        return
    if args.assemble:
        raw = [row for path in args.assemble for row in json.loads(path.read_text())]
        result = {**assemble(raw, args.seconds or 0.0, args.jobs), "note": args.note}
    else:
        result = run_stages(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.quick and result.get("held_out") is not None and result.get("tuning"):
        render(result)


def run_stages(args: argparse.Namespace) -> dict[str, Any]:
    """The tuning stage chooses; the held-out stage checks the chosen candidate (or, run on
    its own, the candidate named, which `assemble` then requires to be the chosen one)."""
    tuning_seeds, held_out_seeds = ([0], [0]) if args.quick else ([0, 1], [0, 1, 2])

    def wanted(index: int) -> bool:
        return not args.tasks or index in args.tasks

    if args.seeds:
        tuning_seeds = held_out_seeds = args.seeds
    scale = 0.2 if args.quick else 1.0
    started = time.monotonic()
    result: dict[str, Any] = {
        "section": "suite", "quick": args.quick, "jobs": args.jobs,
        "tuning_seeds": tuning_seeds, "held_out_seeds": held_out_seeds,
        "tasks": {split: [t.name for s, t in TASKS if s == split]
                  for split in (TUNING, HELD_OUT)},
        "rules": {name: asdict(rule) for name, rule in RULES.items()}, "recipes": RECIPES,
        "tuning": None, "held_out": None,
    }  # fmt: skip
    with (
        tempfile.TemporaryDirectory() as tmp,
        multiprocessing.get_context("fork").Pool(args.jobs) as pool,
    ):
        root = Path(tmp)
        stages = {"all": (TUNING, HELD_OUT), "tuning": (TUNING,), "held-out": (HELD_OUT,)}
        needed = [i for i, (split, _) in enumerate(TASKS)
                  if split in stages[args.stage] and wanted(i)]  # fmt: skip
        for name in pool.starmap(build_files, [(i, root, args.cache) for i in needed]):
            print(f"[{time.monotonic() - started:6.0f}s] teacher ready: {name}", flush=True)
        if args.stage in ("all", "tuning"):
            tuning = [i for i, (split, _) in enumerate(TASKS) if split == TUNING and wanted(i)]
            units = [(i, seed, CANDIDATES) for seed in tuning_seeds for i in tuning]
            result["tuning"] = aggregate(run_units(pool, units, scale, root, started))
            (rule, recipe), result["means"] = choose(result["tuning"])
            print(f"chosen: {rule} | {recipe}", flush=True)
        else:
            rule, recipe = args.candidate.split(" | ")
        result["chosen"] = {"rule": rule, "recipe": recipe, "budget_rule": asdict(RULES[rule])}
        if args.stage in ("all", "held-out"):
            held_out = [i for i, (split, _) in enumerate(TASKS) if split == HELD_OUT and wanted(i)]
            checked = list(dict.fromkeys([(rule, recipe), (next(iter(RULES)), recipe)]))
            units = [(i, seed, checked) for seed in held_out_seeds for i in held_out]
            result["held_out"] = aggregate(run_units(pool, units, scale, root, started))
    result["runs"] = RAW
    result["seconds"] = time.monotonic() - started
    return result


def assemble(raw: list[dict[str, Any]], seconds: float, jobs: int) -> dict[str, Any]:
    """One result from the per-seed rows of stages run side by side (each process keeps its
    rows in PARTIAL): tuning rows choose, and the held-out rows must hold that choice."""
    names = {split: [t.name for s, t in TASKS if s == split] for split in (TUNING, HELD_OUT)}
    tuning = aggregate([r for r in raw if r["task"] in names[TUNING]])
    held_out = aggregate([r for r in raw if r["task"] in names[HELD_OUT]])
    (rule, recipe), means = choose(tuning)
    if not any((r["rule"], r["recipe"]) == (rule, recipe) for r in held_out):
        raise SystemExit(f"no held-out rows for the chosen candidate {rule} | {recipe}")
    seeds = {split: sorted({r["seed"] for r in raw if r["task"] in names[split]})
             for split in (TUNING, HELD_OUT)}  # fmt: skip
    return {
        "section": "suite", "quick": False, "jobs": jobs, "seconds": seconds,
        "tuning_seeds": seeds[TUNING], "held_out_seeds": seeds[HELD_OUT], "tasks": names,
        "rules": {name: asdict(rule) for name, rule in RULES.items()}, "recipes": RECIPES,
        "chosen": {"rule": rule, "recipe": recipe, "budget_rule": asdict(RULES[rule])},
        "means": means, "tuning": tuning, "held_out": held_out, "runs": raw,
    }  # fmt: skip


def _print(row: dict[str, Any], elapsed: float) -> None:
    print(
        f"[{elapsed:6.0f}s] {row['task'][:40]:40s} {row['rule'][:34]:34s} {row['recipe'][:12]:12s}"
        f" seed {row['seed']} student {row['student']:.4f} scratch {row['scratch']:.4f}"
        f" teacher {row['teacher']:.4f} steps {row['steps']} ({row['ms_per_step']:.2f} ms/step)",
        flush=True,
    )


def render(
    result: dict[str, Any], path: Path = Path(__file__).parents[1] / "BENCHMARKS.md"
) -> None:
    """Write the suite's section between its markers at the end of BENCHMARKS.md."""
    text = path.read_text()
    lines = section_lines(result)
    results = path.parent / "bench" / "results"
    if (results / "suite_hf.json").exists():
        lines += hf_lines(json.loads((results / "suite_hf.json").read_text()))
    if (results / "suite_search.json").exists():
        lines += search_lines(json.loads((results / "suite_search.json").read_text()))
    block = "\n".join([MARKERS[0], *lines, MARKERS[1]])
    if MARKERS[0] in text:
        head, rest = text.split(MARKERS[0], 1)
        text = head + block + rest.split(MARKERS[1], 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def section_lines(result: dict[str, Any]) -> list[str]:
    chosen = result["chosen"]
    held = [r for r in result["held_out"] if r["rule"] == chosen["rule"]]
    wins = [r for r in held if min(r["gains"]) > 0]
    roomy = [r for r in held if r["headroom"] >= HEADROOM]
    seeds = len(result["tuning_seeds"]), len(result["held_out_seeds"])
    lines = [
        "## Budget and recipe on held-out tasks (issue 11): chosen by measurement", "",
        "A job that names only teacher, student and dataset gets a training section planned "
        "by `worker/kd/budget.py` (`apply_plan`) and the default recipe; the two were chosen "
        "together here. Each candidate is a budget rule paired with a recipe; on each task "
        "and seed it trains the task's student through the engine (`prepare`, `apply_plan`, "
        "`distill`), beside the same student trained from scratch (cross-entropy on labels, "
        "no teacher, no augmentation) at the same planned budget and seed. On an unlabelled "
        "transfer set the scratch student trains on the few labelled samples there are (its "
        "budget planned for their number). Accuracy is measured on a test set nothing "
        "trains or selects on.", "",
        f"Method: {len(result['tasks']['tuning'])} tuning and "
        f"{len(result['tasks']['held-out'])} held-out tasks, the split fixed in "
        "`bench/suite_tasks.py` before anything was measured; teachers trained there, "
        f"seeded; {seeds[0]} seeds per tuning cell, {seeds[1]} per held-out cell. The "
        "chosen candidate has the best mean gain over scratch among the candidates whose "
        f"mean student accuracy is within {ACCURACY_SLACK} of the best (a rule cannot win by "
        "starving its scratch student); only that candidate, and the pre-planner defaults "
        "with the same recipe, then ran on the held-out tasks. `cap` is the capacity factor: "
        "a student under 5,000 parameters gets (5000/params)^0.25 times the steps, at most "
        "2x. Steps per run are in the tables. The run took "
        f"{result['seconds'] / 60:.0f} min of wall-clock here ({result['jobs']} processes of "
        "one thread each, on a shared 2-core machine). " + result.get("note", ""), "",
        f"**Chosen default: {chosen['rule']}, with the {chosen['recipe']} recipe** "
        "(`worker/kd/budget.py: DEFAULT_RULE`, `worker/kd/spec.py: DEFAULT_RECIPE`; tests "
        "keep them in step with `bench/results/suite.json`). On the held-out tasks it beat "
        f"scratch on every seed on {len(wins)} of {len(held)} tasks; the teacher had "
        f"headroom (>= {HEADROOM:.2f} over scratch) on {len(roomy)} of {len(held)}.", "",
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
        per_seed = " ".join(f"{g:+.3f}" for g in r["gains"])
        lines.append(
            f"| {r['task']} | {r['rule']} | {r['student']:.4f} | {r['scratch']:.4f} | "
            f"{r['gain']:+.4f} | {per_seed} | {r['teacher']:.4f} | {r['headroom']:+.4f} | "
            f"{r['steps']} |"
        )
    return lines


def hf_lines(hf: dict[str, Any]) -> list[str]:
    """The transformer tasks (`python -m bench.suite_hf`)."""
    by_kind = hf.get("chosen_by_kind") or {"sequence_classification": hf["chosen"]}
    chosen = "; ".join(f"{kind}: {name}" for kind, name in by_kind.items())
    lines = [
        "", "### Transformer tasks (`python -m bench.suite_hf`)", "",
        "A Hugging Face teacher, text data; each candidate is a budget rule with a recipe "
        "(the recipe of before, soft targets at T=1 with alpha 0.9, or the same with "
        "`augment.tokens`: that share of each text's tokens replaced at random, teacher and "
        "student seeing the same corrupted text), chosen per task kind on that kind's tuning "
        "task. Classifiers: `baseline: true`, the same student without the teacher at the "
        "same budget and seed (its texts not corrupted: nothing labels a corrupted text "
        "without a teacher) is the scratch column. Sentence embeddings have no teacher-free "
        "target: the scratch column is the same student untrained, and the quality is "
        "nearest-neighbour agreement with the teacher (mean cosine beside it). "
        f"{hf['samples']} texts per task: the job's three-way split carves "
        f"{hf['val_fraction']:.0%} for evaluation (the columns here; no choice reads it), "
        "then the same share of the rest to select the best epoch; the student trains on "
        f"the remaining {hf['samples'] // 4}. The run took {hf['seconds'] / 60:.0f} min. "
        + hf.get("note", ""), "",
        f"**Chosen transformer defaults, per task kind: {chosen}** (`worker/kd/budget.py: "
        "transformer_rule`, `worker/kd/spec.py: AugmentSpec.token_share`; a test keeps them "
        "in step with `bench/results/suite_hf.json`).", "",
        "| split | task | rule | teacher | scratch | student | gain | gain per seed | epochs "
        "| steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for split, rows in (("tuning", hf["tuning"]), ("held-out", hf["held_out"])):
        for r in rows:
            mine = by_kind.get(r.get("kind", "sequence_classification"))
            mark = " **(chosen)**" if r["rule"] == mine else ""
            cosine = (
                f" (cosine {r['scratch_mean_cosine']:.3f} -> {r['mean_cosine']:.3f})"
                if "mean_cosine" in r else ""
            )  # fmt: skip
            per_seed = " ".join(f"{g:+.3f}" for g in r["gains"])
            lines.append(
                f"| {split} | {r['task']} | {r['rule']}{mark} | {r['teacher']:.4f} | "
                f"{r['scratch']:.4f} | {r['student']:.4f}{cosine} | {r['gain']:+.4f} | "
                f"{per_seed} | {r['epochs']} | {r['steps']} |"
            )
    return lines


SHOWN_TRIALS = 12


def search_lines(found: dict[str, Any]) -> list[str]:
    """The kept-aside kind of task through the service (`python -m bench.suite_search`)."""
    lines = [
        "", "### Through the service: defaults only, then a search "
        "(`python -m bench.suite_search`)", "",
        f"Task: {found['task']} ({found['split']}), seed {found['seed']}. `distillery up` (the "
        "embedded default, one worker) on this machine; each job names teacher, student and "
        "dataset, with `baseline: true`; the second adds `\"search\": {\"budget_seconds\": "
        f"{found['search_budget_seconds']}}}`. " + found.get("note", ""), "",
        "| job | status | teacher | baseline | student | kd_gain | verdict | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for name in ("defaults", "search"):
        r = found[name]
        verdict = (r.get("verdict") or {}).get("outcome", "-")

        def num(v: Any, sign: str = "") -> str:
            return "-" if v is None else f"{v:{sign}.4f}"

        lines.append(
            f"| {name} | {r['status']} | {num(r['teacher'])} | {num(r['baseline'])} | "
            f"{num(r['student'])} | {num(r['kd_gain'], '+')} | {verdict} | "
            f"{r['wall_seconds']:.0f} |"
        )
    trials = found["search"].get("trials") or []
    if trials:
        # The first two (scratch, the spec's own recipe) and the best by value; all of them
        # are in the result's JSON.
        ranked = sorted(trials[2:], key=lambda t: -(t.get("value") or 0.0))[: SHOWN_TRIALS - 2]
        shown = sorted(trials[:2] + ranked, key=lambda t: t["number"])
        left = len(trials) - len(shown)
        lines += [
            "",
            f"{len(trials)} trials; shown: trials 0-1 and the best {len(ranked)} by value"
            + (f" ({left} more in `bench/results/suite_search.json`)" if left else "")
            + ".",
            "",
            "| trial | status | value | epochs | params |",
            "| --- | --- | --- | --- | --- |",
        ]
        for t in shown:
            value = "-" if t.get("value") is None else f"{t['value']:.4f}"
            params = ", ".join(f"{k}={v}" for k, v in sorted((t.get("params") or {}).items()))
            lines.append(
                f"| {t['number']} | {t['status']} | {value} | {t.get('epochs_run')} | {params} |"
            )
    return lines


if __name__ == "__main__":
    main()
