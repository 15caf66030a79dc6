"""Where a server's time goes: py-spy samples of the thread holding the GIL, grouped.

`record(pid, seconds)` runs `py-spy record --gil --format raw` on a running process
(py-spy must be installed: `pip install py-spy`; it needs ptrace rights over the process)
and returns collapsed stacks; `breakdown(stacks, rules)` puts each sample in the first
group whose marker occurs in its stack and returns the share of each group.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

# First match wins: specific work first, plumbing last.
API_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("auth: API key -> tenant query (app.auth.lookup)", ("lookup (app/auth.py",)),
    ("job query + row to JobPublic (services.jobs.public_job)", ("public_job (app/",)),
    ("list query + rows to JobPublic (services.jobs.list_jobs)", ("list_jobs (app/",)),
    ("JSON serialisation (to_json)", ("to_json (app/",)),
    ("response validation + JSON (FastAPI serialize_response)", ("serialize_response",)),
    ("session open/close (deps.read)", ("call (app/api/deps.py", "Session.close")),
    (
        "threadpool hand-offs (anyio run_sync, queue, limiter)",
        ("run_sync", "to_thread", "Queue.put", "Queue.get", "CapacityLimiter", "WorkerThread"),
    ),
    ("access log", ("access_log", "logging/__init__")),
    ("routing, middleware, dependency solving", ("run_asgi",)),
    ("HTTP parsing and socket I/O (uvicorn)", ("httptools_impl", "selector_events")),
]


def executable() -> str | None:
    """py-spy on PATH or beside this Python (a venv that is not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def available() -> bool:
    return executable() is not None


def record(pid: int, seconds: float, rate: int = 250) -> list[tuple[list[str], int]]:
    """Collapsed stacks of `pid`'s GIL holder over `seconds` (empty if py-spy fails)."""
    exe = executable()
    if exe is None:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        duration = str(max(1, round(seconds)))
        args = [exe, "record", "--pid", str(pid), "--duration", duration, "--rate", str(rate)]
        args += ["--gil", "--nonblocking", "--format", "raw", "--output", str(out)]
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        if done.returncode != 0 or not out.exists():
            return []
        stacks = []
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
        return stacks


def breakdown(
    stacks: list[tuple[list[str], int]], rules: list[tuple[str, tuple[str, ...]]]
) -> dict[str, float]:
    """Share (%) of the samples in each group, largest first; `other` for the rest."""
    counts: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        joined = ";".join(frames)
        total += count
        for group, markers in rules:
            if any(marker in joined for marker in markers):
                counts[group] += count
                break
        else:
            counts["other (event loop, idle bookkeeping)"] += count
    if not total:
        return {}
    return {group: 100 * n / total for group, n in counts.most_common()}
