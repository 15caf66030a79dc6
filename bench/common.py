"""What every section shares: paths, statistics, the result files, the machine's name, and
the shape of what a section hands the renderer.

Every section module exports `measure(args) -> Result` (runs it, returns what goes in
bench/results/NAME.json) and `rows(result) -> list[Block]` (that result as tables, and
the odd sentence between them); a section with targets also exports `targets(result)`,
its rows of the summary table. bench/report.py lays them out in BENCHMARKS.md.

Rules every figure follows: the compared variants run in the same process (or the same
machine at the same time), interleaved round by round, repeated, and summarised by medians;
a figure is a ratio of two such medians (or a median of per-round ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
Result = dict[str, Any]
Row = list[str]


@dataclass(frozen=True)
class Table:
    """One table of a section: an optional line above it, the table, an optional text below."""

    header: Row
    rows: list[Row]
    title: str = ""
    note: str = ""


Block = Table | str  # a table, or a paragraph of text between tables


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def x(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "**missed**")


def rng(row: dict[str, Any]) -> str:
    """' (low-high)' of a paired ratio's range, or nothing."""
    low, high = row.get("range") or (None, None)
    return "" if low is None else f" ({low:.2f}-{high:.2f})"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


def spread(values: Sequence[float]) -> list[float]:
    return [float(min(values)), float(max(values))] if values else []


def rotate(items: Sequence[Any], by: int) -> list[Any]:
    """Round r runs the variants in an order rotated by r: no variant always goes first."""
    if not items:
        return []
    by %= len(items)
    return [*items[by:], *items[:by]]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    with contextlib.suppress(OSError):
        info["git"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    return info


def section_parser(description: str) -> argparse.ArgumentParser:
    """The options every section takes; a section adds its own to the parser."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer, smaller rounds")
    parser.add_argument("--out", type=Path, help="where to write the JSON result")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temp dir)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, the same for every variant"
    )
    return parser


def run_section(
    name: str, measure: Callable[[argparse.Namespace], Result], parser: argparse.ArgumentParser
) -> None:
    """A section's command line: measure, then write bench/results/NAME.json (a --quick
    run's to bench/results/quick/, or --out)."""
    args = parser.parse_args()
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS) / f"{name}.json"
    log(f"wrote {write_result(name, measure(args), out)}")


def write_result(name: str, data: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    script = Path(sys.argv[0]).resolve()
    try:
        module = ".".join(script.relative_to(ROOT).with_suffix("").parts)
    except ValueError:
        module = script.stem
    payload = {
        "section": name,
        "command": " ".join([".venv/bin/python", "-m", module, *sys.argv[1:]]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def paired_ratio(top: Sequence[float], bottom: Sequence[float]) -> dict[str, Any]:
    """Median and range of the per-round ratios top[r] / bottom[r]."""
    ratios = [t / b for t, b in zip(top, bottom, strict=True)]
    return {"median": median(ratios), "range": spread(ratios)}


class LoadMeter:
    """How busy the whole machine was over a span, and how much of it was this process
    (and its waited-for children): other tenants' load is what makes wall times noisy."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        busy = total = 0.0
        try:
            fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
            idle = fields[3] + fields[4]
            total = sum(fields[:8])
            busy = total - idle
        except (OSError, ValueError, IndexError):
            pass
        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        return busy, total, own

    def stop(self) -> dict[str, float]:
        busy, total, own = self._read()
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        cores = os.cpu_count() or 1
        span_total = (total - self.start[1]) / hz  # core-seconds
        if span_total <= 0:
            return {}
        machine_busy = (busy - self.start[0]) / hz
        own_cpu = own - self.start[2]
        return {
            "machine_busy_pct": 100 * machine_busy / span_total,
            "own_cpu_pct": 100 * own_cpu / span_total,
            "others_pct": max(0.0, 100 * (machine_busy - own_cpu) / span_total),
            "wall_s": span_total / cores,
        }
