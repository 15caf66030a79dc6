"""Run every benchmark section, each in its own process (its `measure`, writing
bench/results/NAME.json), then rewrite the tables of BENCHMARKS.md from those results
(bench/report.py, which asks each section for its `rows`).

Run: make bench                          (installs first, then all of it)
     .venv/bin/python -m bench.run [--quick] [--only training,api] [--no-render]

Sections: training (1), api (2), queue (3), artifacts and downloads (4), metrics_path (5),
scaling (6), throughput (7), LLM distillation methods (issue 13).
`--quick` is a smoke run (small and short; its figures are marked as such); results of a
quick run go to bench/results/quick/ and are not rendered unless --render-quick is given.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench import report
from bench.common import RESULTS, ROOT, log

# `make bench`'s sections, in the order they run (bench.recipes and bench.hf_recipes, longer
# runs, have their own make targets).
SECTIONS = [
    "training",
    "metrics_path",
    "scaling",
    "api",
    "queue",
    "artifacts",
    "downloads",
    "throughput",
    "lm_methods",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of every section")
    parser.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--no-render", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument("--render-quick", action="store_true", help="render a quick run too")
    args = parser.parse_args()
    chosen = SECTIONS if not args.only else [s.strip() for s in args.only.split(",")]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    out_dir = RESULTS / "quick" if args.quick else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    timings: dict[str, float] = {}
    failed: list[str] = []
    started = time.monotonic()
    for section in chosen:
        module = report.SECTIONS[section]
        out = (out_dir / f"{section}.json").relative_to(ROOT)  # the command, as recorded
        command = [sys.executable, "-m", module, "--out", str(out)]
        command += ["--quick"] if args.quick else []
        log(f"== {section}: {' '.join(command[1:])}")
        begin = time.monotonic()
        done = subprocess.run(command, cwd=ROOT, env=env, check=False)
        timings[section] = time.monotonic() - begin
        if done.returncode != 0:
            failed.append(section)
            log(f"!! {section} failed (exit {done.returncode})")
    total = time.monotonic() - started
    log(
        "timings: "
        + ", ".join(f"{s} {t:.0f} s" for s, t in timings.items())
        + f"; total {total:.0f} s"
    )
    if not args.no_render and (not args.quick or args.render_quick):
        log(f"rendered {report.render(out_dir)}")
    if failed:
        sys.exit(f"failed sections: {', '.join(failed)}")


if __name__ == "__main__":
    main()
