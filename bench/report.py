"""Write the tables of BENCHMARKS.md from the recorded results, bench/results/NAME.json.

Each section module turns its result into tables (`rows(result)`, and `targets(result)`
for the summary); this module only lays them out between `<!-- bench:NAME:start -->` and
`<!-- bench:NAME:end -->`. Everything outside the markers is prose kept as it is, and a
section without a result file keeps its old block.

Run: .venv/bin/python -m bench.report [--results bench/results/quick]
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
from pathlib import Path

from bench.common import RESULTS, ROOT, Block, Result, Table

DOC = ROOT / "BENCHMARKS.md"
# The result name (bench/results/NAME.json, the marker's NAME) -> the module that wrote it,
# imported only when its result is there (the sections import torch, transformers, the app).
SECTIONS: dict[str, str] = {
    "training": "bench.training",
    "api": "bench.api",
    "queue": "bench.queue_latency",
    "artifacts": "bench.artifacts",
    "downloads": "bench.downloads",
    "metrics_path": "bench.metrics_path",
    "scaling": "bench.scaling",
    "throughput": "bench.throughput",
    "recipes": "bench.recipes",
    "hf_recipes": "bench.hf_recipes",
    "lm_methods": "bench.lm_methods",
}
SUMMARY_HEADER = ["figure", "target", "measured", ""]


def markdown(table: Block) -> str:
    if isinstance(table, str):
        return table
    lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    text = "\n".join(lines)
    return "\n\n".join(p for p in (table.title, text, table.note) if p)


def footer(result: Result) -> str:
    """Which command, when, on what machine, and how busy the machine was."""
    m = result.get("machine", {})
    load = result.get("load") or {}
    busy = (
        f"; machine {load['machine_busy_pct']:.0f}% busy, "
        f"{load['others_pct']:.0f}% of it other processes"
        if load.get("machine_busy_pct") is not None
        else ""
    )
    quick = " **(quick smoke run: not the figures of record)**" if result.get("quick") else ""
    if "command" not in result:
        return quick.strip()
    return (
        f"`{result['command']}` — {result['finished_at']}, {m.get('cpu')} x "
        f"{m.get('cores')}, torch {m.get('torch')}, git {m.get('git') or '?'}{busy}{quick}"
    )


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + f"\n\n## {name}\n\n{block}\n"


def load(results: Path, name: str) -> Result | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def render(results: Path = RESULTS, doc: Path = DOC) -> Path:
    """Rewrite every block whose result file exists in `results`, and the summary."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    summary: list[list[str]] = []
    for name, module in SECTIONS.items():
        result = load(results, name)
        if result is None:
            continue
        section = importlib.import_module(module)
        body = "\n\n".join(markdown(table) for table in section.rows(result))
        text = replace_block(text, name, body + "\n\n" + footer(result))
        if hasattr(section, "targets"):
            summary += section.targets(result)
    if summary:
        text = replace_block(text, "summary", markdown(Table(SUMMARY_HEADER, summary)))
    doc.write_text(text)
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder")
    print(render(parser.parse_args().results))


if __name__ == "__main__":
    main()
