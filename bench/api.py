"""Section 2: the API under concurrent load, against itself.

One `python -m app.cli api` process per database (DISTILLERY_RATE_LIMIT_PER_MINUTE=0,
uvicorn as `distillery api` runs it, access log on), each database seeded directly with
SQLAlchemy: one tenant with N jobs. A load generator in a separate process (wrk, one
thread, closed loop) drives 127.0.0.1 with 32 connections (the probe below uses 64, to
check that the server does not deadlock).

- `GET /v1/jobs/{id}` (authenticated: key lookup, tenant-scoped read, serialisation) vs
  `GET /healthz` (an `async def` returning a constant: the barest route) of the same
  server process, interleaved, repeated: the ratio of
  requests/s [target >= 0.5] and both p50/p99.
- `GET /v1/jobs?limit=20` p99 with 1k, 10k and 100k jobs in the table [flat], and the same
  with `&status=failed` (a filter that hits 5% of the rows).
- The same job-vs-healthz ratio on PostgreSQL when one answers on 127.0.0.1:5432.
- Deadlock probe: 1 s bursts of 64 connections on `GET /v1/jobs/{id}`, then one
  `GET /healthz`; a healthz that takes seconds means every threadpool thread is waiting
  for a pooled database connection held by a request that waits for a thread.
- With py-spy installed, a profile of `GET /v1/jobs/{id}` under load (GIL samples,
  grouped by what the server was doing).

Beside requests/s, each run records the server's CPU milliseconds per request: the
machine's other tenants move it much less than they move throughput.

Run: .venv/bin/python -m bench.api [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench import profiles, servers
from bench.common import (
    Block,
    LoadMeter,
    Result,
    Row,
    Table,
    log,
    median,
    paired_ratio,
    rng,
    rotate,
    run_section,
    section_parser,
    verdict,
    x,
)

CONNECTIONS = 32
PROBE_CONNECTIONS = 64
TARGET_RATIO = 0.5
STALL_SECONDS = 5.0


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
    summary: dict[str, Any] = {key: median([r[key] for r in runs]) for key in keys}
    summary["requests"] = sum(r.get("requests", 0) for r in runs)
    summary["errors"] = sum(r.get("non_2xx", 0) + r.get("socket_errors", 0) for r in runs)
    summary["runs"] = runs
    summary["tool"] = runs[0].get("tool") if runs else None
    return summary


def interleave(
    targets: dict[str, tuple[str, int, dict[str, str]]], rounds: int, seconds: float
) -> dict[str, list[dict[str, Any]]]:
    """Every target once per round, in an order rotated by the round."""
    for url, _, headers in targets.values():  # warm-up, not recorded
        # On a busy machine the first second can end before the first answers (every
        # connection's first request looks its key up): not an error here.
        servers.load(url, 2, CONNECTIONS, headers, allow_empty=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for r in range(rounds):
        for name in rotate(list(targets), r):
            url, pid, headers = targets[name]
            runs[name].append(servers.measure(url, pid, seconds, CONNECTIONS, headers))
        log(
            f"    round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {runs[n][-1]['rps']:.0f}/s" for n in targets)
        )
    return runs


def job_vs_healthz(
    base: str,
    pid: int,
    seeded: servers.Seeded,
    rounds: int,
    seconds: float,
) -> dict[str, Any]:
    """GET /v1/jobs/{id} against GET /healthz on the same server, interleaved."""
    auth = {"Authorization": f"Bearer {seeded.key}"}
    job_path = f"/v1/jobs/{seeded.job_ids[len(seeded.job_ids) // 2]}"
    targets = {
        "healthz": (f"{base}/healthz", pid, {}),
        "job": (f"{base}{job_path}", pid, auth),
    }
    runs = interleave(targets, rounds, seconds)

    def ratio(top: str, bottom: str, key: str = "rps") -> dict[str, Any]:
        return paired_ratio([r[key] for r in runs[top]], [r[key] for r in runs[bottom]])

    main = ratio("job", "healthz")
    result: dict[str, Any] = {
        "endpoints": {name: summarize(rs) for name, rs in runs.items()},
        "rps_ratio": {**main, "target": TARGET_RATIO, "met": main["median"] >= TARGET_RATIO},
        # CPU per request, healthz / job: the same ratio, as server work
        "cpu_ratio": ratio("healthz", "job", "server_cpu_ms_per_request")["median"],
    }
    return result


def deadlock_probe(
    base: str, log_file: Path, seeded: servers.Seeded, bursts: int = 3
) -> dict[str, Any]:
    """Bursts of 64 connections, each followed by one healthz; stops at the first stall."""
    auth = {"Authorization": f"Bearer {seeded.key}"}
    url = f"{base}/v1/jobs/{seeded.job_ids[len(seeded.job_ids) // 2]}"
    runs = []
    for _ in range(bursts):
        burst = servers.load(url, 1, PROBE_CONNECTIONS, auth, allow_empty=True)
        start = time.perf_counter()
        try:
            status = httpx.get(f"{base}/healthz", timeout=120).status_code
        except httpx.HTTPError:
            status = 0
        stall = time.perf_counter() - start
        runs.append({"burst_requests": burst.get("requests", 0), "healthz_after_s": stall})
        log(f"    burst: {burst.get('requests', 0)} requests, then healthz in {stall:.2f} s")
        if stall > STALL_SECONDS or status != 200:
            break
    time.sleep(1)
    errors_500 = log_file.read_text(errors="replace").count('" 500')
    return {
        "connections": PROBE_CONNECTIONS,
        "bursts": runs,
        "stalled": any(r["healthz_after_s"] > STALL_SECONDS for r in runs),
        "longest_stall_s": max(r["healthz_after_s"] for r in runs),
        "server_500s": errors_500,
    }


def profile(base: str, pid: int, seeded: servers.Seeded, seconds: float) -> dict[str, Any]:
    """py-spy over the server while wrk loads GET /v1/jobs/{id} (and /healthz)."""
    if not profiles.available():
        return {"available": False}
    auth = {"Authorization": f"Bearer {seeded.key}"}
    job_path = f"/v1/jobs/{seeded.job_ids[len(seeded.job_ids) // 2]}"
    out: dict[str, Any] = {"available": True}
    for name, url, headers, server in (
        ("job", f"{base}{job_path}", auth, pid),
        ("healthz", f"{base}/healthz", {}, pid),
    ):
        with ThreadPoolExecutor(1) as pool:
            stacks = pool.submit(profiles.record, server, seconds)
            time.sleep(0.2)
            servers.load(url, seconds + 1, CONNECTIONS, headers)
            out[name] = profiles.breakdown(stacks.result(), profiles.API_RULES)
    return out


def measure(args: argparse.Namespace) -> Result:
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [s for s in sizes if s <= 10000] or sizes[:1]
    rounds, seconds = (2, 1.0) if args.quick else (5, 2.0)
    load = LoadMeter()
    result: dict[str, Any] = {
        "connections": CONNECTIONS,
        "rounds": rounds,
        "seconds_per_run": seconds,
        "quick": args.quick,
        "sizes": sizes,
    }
    with (
        tempfile.TemporaryDirectory(dir=args.work) as tmp,
        servers.processes(Path(tmp) / "logs") as procs,
    ):
        work = Path(tmp)
        seeded: dict[int, servers.Seeded] = {}
        bases: dict[int, tuple[str, int]] = {}
        for n in sizes:
            data_dir = work / f"sqlite-{n}"
            log(f"seeding SQLite with {n} jobs")
            seeded[n] = servers.seed(servers.sqlite_url(data_dir), n)
            base, child = servers.start_api(procs, f"api-sqlite-{n}", data_dir)
            bases[n] = (base, child.pid)
        middle = sizes[len(sizes) // 2]
        for base, _ in bases.values():
            servers.wait_up(base, procs)

        log(f"GET /v1/jobs/{{id}} vs GET /healthz (SQLite, {middle} jobs)")
        result["sqlite"] = job_vs_healthz(*bases[middle], seeded[middle], rounds, seconds)
        result["sqlite"]["jobs_in_table"] = middle

        lists: dict[str, Any] = {}
        for label, query in (("all", "limit=20"), ("status=failed", "limit=20&status=failed")):
            log(f"GET /v1/jobs?{query} with {', '.join(map(str, sizes))} jobs")
            targets = {
                str(n): (
                    f"{bases[n][0]}/v1/jobs?{query}",
                    bases[n][1],
                    {"Authorization": f"Bearer {seeded[n].key}"},
                )
                for n in sizes
            }
            runs = interleave(targets, rounds if label == "all" else max(2, rounds - 2), seconds)
            by_size = {n: summarize(runs[n]) for n in runs}
            smallest, largest = str(sizes[0]), str(sizes[-1])
            lists[label] = {
                "by_size": by_size,
                "p99_ratio_largest_smallest": paired_ratio(
                    [r["p99_ms"] for r in runs[largest]], [r["p99_ms"] for r in runs[smallest]]
                ),
                "cpu_ratio_largest_smallest": by_size[largest]["server_cpu_ms_per_request"]
                / by_size[smallest]["server_cpu_ms_per_request"],
            }
        result["list"] = lists

        log("profile of GET /v1/jobs/{id} under load")
        result["profile"] = profile(*bases[middle], seeded[middle], 2 if args.quick else 4)
        log(f"deadlock probe: {PROBE_CONNECTIONS} connections on GET /v1/jobs/{{id}}")
        api_log = work / "logs" / f"api-sqlite-{middle}.log"
        result["deadlock_probe"] = deadlock_probe(bases[middle][0], api_log, seeded[middle])
        procs.stop()

        if not args.no_postgres and servers.postgres_available():
            n = 10000
            name = f"distillery_bench_{os.getpid()}"
            with servers.postgres_database(name) as url:
                log(f"seeding PostgreSQL with {n} jobs")
                pg = servers.seed(url, n)
                base, child = servers.start_api(procs, "api-postgres", work / "pg", url)
                servers.wait_up(base, procs)
                log("GET /v1/jobs/{id} vs GET /healthz (PostgreSQL)")
                result["postgres"] = job_vs_healthz(base, child.pid, pg, rounds, seconds)
                result["postgres"]["jobs_in_table"] = n
                procs.stop()
        else:
            result["postgres"] = None
    result["load"] = load.stop()
    return result


ENDPOINT_HEADER = ["endpoint", "requests/s", "p50 ms", "p99 ms", "server CPU ms/request", "errors"]


def endpoint_row(name: str, e: dict[str, Any]) -> Row:
    return [
        name,
        f"{e['rps']:.0f}",
        f"{e['p50_ms']:.1f}",
        f"{e['p99_ms']:.1f}",
        f"{e['server_cpu_ms_per_request']:.2f}",
        str(e["errors"]),
    ]


def rows(r: Result) -> list[Block]:
    blocks: list[Block] = []
    for db in ("sqlite", "postgres"):
        block = r.get(db)
        if not block:
            continue
        ratio = block["rps_ratio"]
        blocks.append(
            Table(
                ENDPOINT_HEADER,
                [endpoint_row(f"`{n}`", e) for n, e in block["endpoints"].items()],
                title=f"**{'SQLite' if db == 'sqlite' else 'PostgreSQL'}**, "
                f"{block['jobs_in_table']} jobs, {r['connections']} connections:",
                note=f"GET /v1/jobs/{{id}} / GET /healthz, requests/s: **{ratio['median']:.2f}**"
                + rng(ratio)
                + f" [target >= {ratio['target']}: {verdict(ratio['met'])}]; as server CPU per "
                f"request (healthz / job): {block['cpu_ratio']:.2f}.",
            )
        )
    for label, block in (r.get("list") or {}).items():
        ratio = block["p99_ratio_largest_smallest"]
        query = "limit=20" if label == "all" else f"limit=20&{label}"
        blocks.append(
            Table(
                ["jobs in table", *ENDPOINT_HEADER[1:]],
                [endpoint_row(f"{int(n):,}", e) for n, e in block["by_size"].items()],
                title=f"`GET /v1/jobs?{query}` (SQLite):",
                note=f"p99 largest / smallest table: **{ratio['median']:.2f}**{rng(ratio)}; "
                "server CPU per request, largest / smallest: "
                f"{block['cpu_ratio_largest_smallest']:.2f}.",
            )
        )
    probe = r.get("deadlock_probe")
    if probe:
        bursts = "; ".join(
            f"{b['burst_requests']} requests, then healthz in {b['healthz_after_s']:.2f} s"
            for b in probe["bursts"]
        )
        blocks.append(
            f"Deadlock probe, 1 s bursts of {probe['connections']} connections on "
            "`GET /v1/jobs/{id}`, each followed by one `GET /healthz`:\n\n"
            f"- {'**stalled**' if probe['stalled'] else 'no stall'} ({bursts})"
        )
    prof = r.get("profile") or {}
    if prof.get("available"):
        names = [k for k, v in prof.items() if isinstance(v, dict)]
        groups = sorted({g for n in names for g in prof[n]})
        profile_rows = [[g] + [f"{prof[n].get(g, 0):.0f}%" for n in names] for g in groups]
        profile_rows.sort(key=lambda row: -float(row[1].rstrip("%")))
        blocks.append(
            Table(
                ["", *[f"`{n}`" for n in names]],
                profile_rows,
                title="Where the server's time goes under load (py-spy, samples of the thread "
                "holding the GIL):",
            )
        )
    tool = (r.get("sqlite") or {}).get("endpoints", {}).get("healthz", {}).get("tool", "wrk")
    blocks.append(
        f"{r['rounds']} rounds x {r['seconds_per_run']:g} s per endpoint, interleaved; "
        f"medians over rounds; load from `{tool}`."
    )
    return blocks


def targets(r: Result) -> list[Row]:
    summary = []
    for db in ("sqlite", "postgres"):
        if r.get(db):
            ratio = r[db]["rps_ratio"]
            summary.append(
                [
                    f"2. GET job / healthz requests/s ({db})",
                    f">= {TARGET_RATIO}",
                    x(ratio["median"]),
                    verdict(ratio["met"]),
                ]
            )
    for label, block in (r.get("list") or {}).items():
        ratio = block["p99_ratio_largest_smallest"]
        sizes = list(block["by_size"])
        summary.append(
            [
                f"2. list p99, {int(sizes[-1]):,} / {int(sizes[0]):,} jobs ({label})",
                "flat",
                x(ratio["median"]),
                verdict(ratio["median"] <= 1.25),
            ]
        )
    probe = r.get("deadlock_probe")
    if probe:
        summary.append(
            [
                f"2. no stall at {probe['connections']} connections",
                "none",
                f"{probe['longest_stall_s']:.1f} s",
                verdict(not probe["stalled"]),
            ]
        )
    return summary


def parser() -> argparse.ArgumentParser:
    options = section_parser(__doc__ or "")
    options.add_argument("--sizes", default="1000,10000,100000")
    options.add_argument("--no-postgres", action="store_true")
    return options


if __name__ == "__main__":
    run_section("api", measure, parser())
