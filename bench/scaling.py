"""Section 6: how the work grows with its size (list latency vs jobs is in section 2).

- Epoch time vs training-set size: the engine online on the tabular workload with 1k to
  16k training samples (same teacher and student), sizes interleaved round by round; the
  time per sample should stay flat (linear growth).
- Report time vs validation-set size: a 1-epoch job with 500 to 32k validation samples;
  the report phase is the time from the last `epoch_end` event to `training_finished`:
  exporting the student (TorchScript, safetensors), reloading it, evaluating it on the
  validation set, timing both models at batch 1, writing metrics.csv, curves.png and the
  model card. One more run at the smallest and the largest size times each step of the
  phase (the runner's functions wrapped with timers from here), and the two ONNX exporters
  the engine has (`worker.kd.exports.onnx.export_graph` with `dynamo=True`, the torch.export-based
  one, and `dynamo=False`, the TorchScript-based one, now tried first) export the same
  student, interleaved.

Run: .venv/bin/python -m bench.scaling [--quick]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench import loops, workloads
from bench.common import (
    LoadMeter,
    Result,
    Row,
    Table,
    log,
    median,
    ms,
    rotate,
    run_section,
    section_parser,
    verdict,
)

# worker.kd.tasks.tensor_job's names for the steps of the report phase, as it calls them.
REPORT_STEPS = {
    "save_student": "student.pt (TorchScript) + safetensors",
    "export_onnx": "student.onnx export",
    "tensor_report": "report: evaluate, batch-1 latency of both models",
    "plot_curves": "curves.png (matplotlib)",
    "model_card": "README.md model card",
}


@contextmanager
def timed_steps() -> Iterator[dict[str, float]]:
    """Wrap the runner's report-phase functions with timers while the body runs."""
    from worker.kd.tasks import tensor_job as runner

    spent: dict[str, float] = {}
    originals = {name: getattr(runner, name) for name in REPORT_STEPS if hasattr(runner, name)}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start

        return timed

    for name, fn in originals.items():
        setattr(runner, name, wrap(name, fn))
    try:
        yield spent
    finally:
        for name, fn in originals.items():
            setattr(runner, name, fn)


def onnx_exporters(workload: workloads.Workload, work: Path, rounds: int) -> dict[str, Any]:
    """Seconds to export the same student with each exporter, interleaved."""
    try:
        from worker.kd.exports import onnx, tensor

        exporters = {
            "torch.export-based": partial(
                onnx.export_graph, signature=tensor.SIGNATURE, dynamo=True
            ),
            "TorchScript-based (default)": partial(
                onnx.export_graph, signature=tensor.SIGNATURE, dynamo=False
            ),
        }
    except (ImportError, AttributeError) as exc:
        return {"available": False, "reason": str(exc)}
    student = loops.build_student(workload).eval()
    example = workload.x[:2]
    spent: dict[str, list[float]] = {name: [] for name in exporters}
    for r in range(rounds + 1):
        for name in rotate(list(exporters), r):
            start = time.perf_counter()
            exporters[name](student, (example,), work / "student.onnx")
            if r:  # the first round warms both up
                spent[name].append(time.perf_counter() - start)
    return {"available": True, "seconds": {name: median(s) for name, s in spent.items()}}


def measure(args: argparse.Namespace) -> Result:
    torch.set_num_threads(args.threads)
    if args.quick:
        train_sizes, val_sizes, rounds, epochs = [1000, 4000], [500, 4000], 2, 3
    else:
        train_sizes = [1000, 2000, 4000, 8000, 16000]
        val_sizes = [500, 2000, 8000, 32000, 128000]
        rounds, epochs = 3, 4
    load = LoadMeter()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        base = workloads.make("mlp", work / "base", n_train=2000, n_val=500, teacher_epochs=1)
        by_train = {n: workloads.with_size(base, n, 500, work) for n in train_sizes}
        by_val = {m: workloads.with_size(base, 2000, m, work) for m in val_sizes}
        epoch_s: dict[int, list[float]] = {n: [] for n in train_sizes}
        report_s: dict[int, list[float]] = {m: [] for m in val_sizes}
        for r in range(rounds):
            for n in rotate(train_sizes, r):
                gc.collect()
                run = loops.engine(by_train[n], epochs, work / "out")
                epoch_s[n].append(median(run.epoch_seconds))
            for m in rotate(val_sizes, r):
                gc.collect()
                run = loops.engine(by_val[m], 1, work / "out")
                seconds = loops.phase_seconds(run.marks, "epoch_end", "training_finished")
                report_s[m].append(float("nan") if seconds is None else seconds)
            log(
                f"  round {r + 1}/{rounds}: epoch "
                + ", ".join(f"{n}: {epoch_s[n][-1] * 1000:.0f} ms" for n in train_sizes)
                + "; report "
                + ", ".join(f"{m}: {report_s[m][-1] * 1000:.0f} ms" for m in val_sizes)
            )
        steps: dict[str, Any] = {}
        for m in (val_sizes[0], val_sizes[-1]):
            with timed_steps() as spent:
                run = loops.engine(by_val[m], 1, work / "out")
            phase = loops.phase_seconds(run.marks, "epoch_end", "training_finished") or 0.0
            steps[str(m)] = {
                "phase_s": phase,
                "steps": {REPORT_STEPS[k]: v for k, v in spent.items()},
                "rest_s": phase - sum(spent.values()),
            }
        exporters = onnx_exporters(base, work, 2 if args.quick else 5)
    return {
        "threads": args.threads,
        "rounds": rounds,
        "quick": args.quick,
        "epoch_vs_train_size": [
            {
                "train_samples": n,
                "epoch_s": median(epoch_s[n]),
                "us_per_sample": median(epoch_s[n]) / n * 1e6,
                "runs": epoch_s[n],
            }
            for n in train_sizes
        ],
        "report_vs_val_size": [
            {"val_samples": m, "report_s": median(report_s[m]), "runs": report_s[m]}
            for m in val_sizes
        ],
        "report_steps": steps,
        "onnx_exporters": exporters,
        "load": load.stop(),
    }


def growth(r: Result) -> float:
    """How much faster than the data the epoch time grows, first to last size (1 = linear)."""
    first, last = r["epoch_vs_train_size"][0], r["epoch_vs_train_size"][-1]
    return (last["epoch_s"] / first["epoch_s"]) / (last["train_samples"] / first["train_samples"])


def rows(r: Result) -> list[Table]:
    epoch_rows = [
        [f"{e['train_samples']:,}", ms(e["epoch_s"]), f"{e['us_per_sample']:.1f} us"]
        for e in r["epoch_vs_train_size"]
    ]
    report_rows = [[f"{e['val_samples']:,}", ms(e["report_s"])] for e in r["report_vs_val_size"]]
    first, last = r["report_vs_val_size"][0], r["report_vs_val_size"][-1]
    report_note = (
        f"{last['val_samples'] // first['val_samples']}x the validation samples: "
        f"{last['report_s'] / first['report_s']:.2f}x the report time."
        + exporters_note(r.get("onnx_exporters") or {})
    )
    tables = [
        Table(
            ["training samples", "epoch", "per sample"],
            epoch_rows,
            note=f"Epoch time grows {growth(r):.2f}x as fast as the data (1.00 = linear).",
        ),
        Table(["validation samples", "report phase"], report_rows, note=report_note),
    ]
    steps = r.get("report_steps") or {}
    if steps:
        tables.append(report_steps_table(steps))
    return tables


def report_steps_table(steps: dict[str, Any]) -> Table:
    sizes = list(steps)
    names = list(dict.fromkeys(n for size in sizes for n in steps[size]["steps"]))
    step_rows = [[n] + [ms(steps[size]["steps"].get(n)) for size in sizes] for n in names]
    step_rows.append(
        ["everything else (reload, metrics.csv, ...)"] + [ms(steps[s]["rest_s"]) for s in sizes]
    )
    step_rows.append(["**report phase**"] + [ms(steps[s]["phase_s"]) for s in sizes])
    header = ["step", *[f"{int(s):,} validation samples" for s in sizes]]
    return Table(header, step_rows, title="The report phase step by step:")


def exporters_note(block: dict[str, Any]) -> str:
    if not block.get("available"):
        return ""
    seconds = block["seconds"]
    names = list(seconds)
    return (
        " ONNX export of the same student, interleaved: "
        + ", ".join(f"{n} {ms(v)}" for n, v in seconds.items())
        + f" ({names[0]} / {names[1]}: {seconds[names[0]] / seconds[names[1]]:.1f}x)."
    )


def targets(r: Result) -> list[Row]:
    value = growth(r)
    return [["6. epoch time vs data size", "linear", f"{value:.2f}x linear", verdict(value < 1.25)]]


if __name__ == "__main__":
    run_section("scaling", measure, section_parser(__doc__ or ""))
