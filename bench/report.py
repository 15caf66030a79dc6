"""Render bench/results/*.json into BENCHMARKS.md (between marker comments) and the plots
in bench/plots/. Only the text between `<!-- bench:NAME:start -->` and
`<!-- bench:NAME:end -->` is rewritten; everything else in BENCHMARKS.md is prose kept as
it is. A section without a result file keeps its old text.

Run: .venv/bin/python -m bench.report
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import PLOTS, RESULTS, ROOT

DOC = ROOT / "BENCHMARKS.md"
Result = dict[str, Any]


def load(name: str) -> Result | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def x(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "**missed**")


def rng(row: dict[str, Any]) -> str:
    low, high = row.get("range") or (None, None)
    return "" if low is None else f" ({low:.2f}-{high:.2f})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def footer(result: Result) -> str:
    m = result.get("machine", {})
    load_info = result.get("load") or {}
    busy = (
        f"; machine {load_info['machine_busy_pct']:.0f}% busy, "
        f"{load_info['others_pct']:.0f}% of it other processes"
        if load_info.get("machine_busy_pct") is not None
        else ""
    )
    quick = " **(quick smoke run: not the figures of record)**" if result.get("quick") else ""
    return (
        f"\n\n`{result['command']}` — {result['finished_at']}, {m.get('cpu')} x "
        f"{m.get('cores')}, torch {m.get('torch')}, git {m.get('git') or '?'}{busy}{quick}"
    )


# Sections ---------------------------------------------------------------------------------


def render_training(r: Result) -> str:
    parts = []
    for name, w in r["workloads"].items():
        rows = []
        for v in w["variants"].values():
            rows.append(
                [
                    v["label"],
                    ms(v["epoch_s"]),
                    f"{v['step_ms']:.3f} ms",
                    ms(v.get("epoch_cpu_s")),
                    f"{v['val_accuracy']:.3f}",
                ]
            )
        student = json.dumps(w["student"])
        parts.append(
            f"**{name}**: {w['train_samples']} training samples, {w['val_samples']} validation, "
            f"{w['steps_per_epoch']} steps of 64 per epoch; student `{student}`; teacher "
            f"accuracy {w['teacher_val_accuracy']:.3f}.\n\n"
            + table(["variant", "epoch (wall)", "per step", "epoch (CPU)", "val accuracy"], rows)
        )
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
        parts.append(table(["ratio", "wall, median (range)", "CPU", "target", ""], ratio_rows))
    anat = r.get("step_anatomy") or {}
    if anat.get("available"):
        rows = [
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
        parts.append(
            f"Step anatomy ({anat['workload']}, one batch, us per step, medians of interleaved "
            "rounds):\n\n"
            + table(["part", "engine", "hand-written", "delta", "what differs"], rows)
            + f"\n\nSum of delta: {anat['delta_us_total']:+.0f} us per step; measured (c) - (b): "
            + ("-" if measured is None else f"{measured:+.0f} us per step (wall)")
            + ("." if measured_cpu is None else f", {measured_cpu:+.0f} us (CPU).")
        )
    elif anat:
        parts.append(f"Step anatomy unavailable: {anat.get('reason')}")
    cache = r["cache"]
    calls = cache.get("teacher_calls") or {}
    parts.append(
        f"Teacher-output cache probe: {cache['reason']} (teacher forward calls per epoch, "
        f"online {calls.get('online')}, cache {calls.get('cache')})."
        + (
            ""
            if cache["available"]
            else " **(d) is not measured yet**: it is added automatically once the engine "
            "stops calling the teacher after the first epoch with `cache_teacher: true`."
        )
    )
    parts.append(
        f"{r['rounds']} rounds x {r['epochs_per_run']} epochs per run, "
        f"`torch.set_num_threads({r['threads']})` for every variant; an epoch is the gap "
        "between two epoch ends (validation included, the first epoch left out); ratios are "
        "medians of per-round ratios."
    )
    return "\n\n".join(parts) + footer(r)


def render_metrics_path(r: Result) -> str:
    rows = []
    for name, w in r["workloads"].items():
        for variant in w["ratio_vs_memory"]:
            row = w["ratio_vs_memory"][variant]
            label = (
                "DatabaseReporter (defaults: flush 1 s, cancel poll 0.5 s)"
                if variant == "database"
                else "DatabaseReporter unthrottled (flush 0, cancel poll 0)"
            )
            rows.append(
                [
                    name,
                    label,
                    ms(w["epoch_s"]["memory"]),
                    ms(w["epoch_s"][variant]),
                    x(row["median"], 3) + rng(row),
                    x(row.get("cpu"), 3),
                    f"{w['inside_ms_per_epoch'][variant]:.2f} ms = {row['inside_pct']:.2f}%"
                    if "inside_pct" in row
                    else "-",
                    x(w["writes_per_epoch"][variant], 1),
                    x(w["statements_per_epoch"][variant], 1),
                    f"<= {100 * (r['target_ratio'] - 1):.0f}%: {verdict(w['met'])}"
                    if variant == "database"
                    else "-",
                ]
            )
    return (
        table(
            [
                "workload",
                "reporter",
                "epoch, MemoryReporter",
                "epoch, this",
                "ratio (wall)",
                "ratio (CPU)",
                "inside the reporter, per epoch",
                "writes / epoch",
                "SQL statements / epoch",
                "target",
            ],
            rows,
        )
        + f"\n\n{r['database']}; {r['rounds']} rounds x {r['epochs_per_run']} epochs. The "
        "target is judged on the time inside the reporter (the A/B ratios, whose range shows "
        "the noise, agree within it); the MemoryReporter spends "
        + ", ".join(
            f"{w['inside_ms_per_epoch']['memory']:.3f} ms ({n})" for n, w in r["workloads"].items()
        )
        + " per epoch."
        + (
            f"\n\nOne epoch's flush ({r['flush']['rows']} metric rows, the epoch_end event, the "
            "progress update, one commit), interleaved: "
            + ", ".join(f"{n} {v:.2f} ms" for n, v in r["flush"]["ms"].items())
            + "."
            if r.get("flush")
            else ""
        )
        + footer(r)
    )


def _endpoint_rows(endpoints: dict[str, Any]) -> list[list[str]]:
    return [
        [
            f"`{name}`",
            f"{e['rps']:.0f}",
            f"{e['p50_ms']:.1f}",
            f"{e['p99_ms']:.1f}",
            f"{e['server_cpu_ms_per_request']:.2f}",
            str(e["errors"]),
        ]
        for name, e in endpoints.items()
    ]


def render_api(r: Result) -> str:
    header = ["endpoint", "requests/s", "p50 ms", "p99 ms", "server CPU ms/request", "errors"]
    parts = []
    for db in ("sqlite", "postgres"):
        block = r.get(db)
        if not block:
            continue
        rows = _endpoint_rows(block["endpoints"])
        ratio = block["rps_ratio"]
        text = (
            f"**{'SQLite' if db == 'sqlite' else 'PostgreSQL'}**, {block['jobs_in_table']} "
            f"jobs, {r['connections']} connections:\n\n"
            + table(header, rows)
            + f"\n\nGET /v1/jobs/{{id}} / GET /healthz, requests/s: **{ratio['median']:.2f}**"
            + rng(ratio)
            + f" [target >= {ratio['target']}: {verdict(ratio['met'])}]; as server CPU per "
            f"request (healthz / job): {block['cpu_ratio']:.2f}."
        )
        parts.append(text)
    lists = r.get("list") or {}
    for label, block in lists.items():
        rows = [
            [
                f"{int(n):,}",
                f"{e['rps']:.0f}",
                f"{e['p50_ms']:.1f}",
                f"{e['p99_ms']:.1f}",
                f"{e['server_cpu_ms_per_request']:.2f}",
                str(e["errors"]),
            ]
            for n, e in block["by_size"].items()
        ]
        ratio = block["p99_ratio_largest_smallest"]
        query = "limit=20" if label == "all" else f"limit=20&{label}"
        parts.append(
            f"`GET /v1/jobs?{query}` (SQLite):\n\n"
            + table(["jobs in table", *header[1:]], rows)
            + f"\n\np99 largest / smallest table: **{ratio['median']:.2f}**{rng(ratio)}; "
            "server CPU per request, largest / smallest: "
            f"{block['cpu_ratio_largest_smallest']:.2f}."
        )
    probe = r.get("deadlock_probe")
    if probe:
        bursts = "; ".join(
            f"{b['burst_requests']} requests, then healthz in {b['healthz_after_s']:.2f} s"
            for b in probe["bursts"]
        )
        lines = [f"- {'**stalled**' if probe['stalled'] else 'no stall'} ({bursts})"]
        parts.append(
            f"Deadlock probe, 1 s bursts of {probe['connections']} connections on "
            "`GET /v1/jobs/{id}`, each followed by one `GET /healthz`:\n\n" + "\n".join(lines)
        )
    prof = r.get("profile") or {}
    if prof.get("available"):
        groups = sorted({g for k, v in prof.items() if isinstance(v, dict) for g in v})
        names = [k for k, v in prof.items() if isinstance(v, dict)]
        rows = [[g] + [f"{prof[n].get(g, 0):.0f}%" for n in names] for g in groups]
        rows.sort(key=lambda row: -float(row[1].rstrip("%")))
        parts.append(
            "Where the server's time goes under load (py-spy, samples of the thread holding "
            "the GIL):\n\n" + table(["", *[f"`{n}`" for n in names]], rows)
        )
    tool = (r.get("sqlite") or {}).get("endpoints", {}).get("healthz", {}).get("tool", "wrk")
    parts.append(
        f"{r['rounds']} rounds x {r['seconds_per_run']:g} s per endpoint, interleaved; "
        f"medians over rounds; load from `{tool}`."
    )
    return "\n\n".join(parts) + footer(r)


def render_queue(r: Result) -> str:
    rows = []
    for name, s in r["stacks"].items():
        rows.append(
            [
                name,
                str(s["jobs"]),
                f"{s['to_validating_median_s']:.3f} s",
                f"{s['to_running_median_s']:.3f} s",
                f"{s['to_running_p90_s']:.3f} s",
                f"{s['to_running_max_s']:.3f} s",
                f"{s['idle_worker_cpu_pct']:.2f}%",
            ]
        )
    return (
        table(
            [
                "broker",
                "jobs",
                "to claimed (validating), median",
                "to running, median",
                "p90",
                "max",
                "idle worker CPU",
            ],
            rows,
        )
        + f"\n\nTarget: median to running on Redis <= {r['target_redis_median_s']} s: "
        f"{verdict(r['met'])}. Idle CPU measured over {r['idle_seconds']:g} s with an empty "
        "queue (one core = 100%)." + footer(r)
    )


def render_artifacts(r: Result) -> str:
    rows = []
    for name, speed in r["mb_per_s"].items():
        cpu = r["server_cpu_s_per_gb"].get(name)
        rows.append([name, f"{speed:.0f}", "-" if cpu is None else f"{cpu:.2f}"])
    ratio, cached = r["ratio"], r["ratio_page_cache"]
    resume = r["resume"]
    return (
        table(["read", "MB/s (median)", "server CPU s per GB"], rows)
        + f"\n\n- HTTP / disk (both from disk): **{ratio['median']:.2f}**{rng(ratio)} "
        f"[target >= {ratio['target']}: {verdict(ratio['met'])}]; both from the page cache: "
        f"{cached['median']:.2f}{rng(cached)}."
        f"\n- Server RSS during a download: +{r['server_rss_growth_mb']['median']:.1f} MB median, "
        f"+{r['server_rss_growth_mb']['max']:.1f} MB at most, on "
        f"{r['server_rss_before_mb']:.0f} MB, for a {r['megabytes']} MB file: streamed "
        f"[flat: {verdict(r['server_rss_growth_mb']['max'] < 0.1 * r['megabytes'])}]."
        f"\n- Resume: full response says `Accept-Ranges: {resume['accept_ranges']}`; broken "
        f"off after {resume['first_part_bytes']:,} bytes, "
        f"`Range: bytes={resume['first_part_bytes']}-` "
        f"answered {resume['range_status']} with `Content-Range: {resume['content_range']}`; "
        f"the two parts hash to the artifact's sha256: "
        f"{'yes' if resume['sha256_matches'] else '**no**'}."
        + f"\n\n{r['rounds']} rounds, variants interleaved."
        + footer(r)
    )


def render_scaling(r: Result) -> str:
    epoch_rows = [
        [f"{e['train_samples']:,}", ms(e["epoch_s"]), f"{e['us_per_sample']:.1f} us"]
        for e in r["epoch_vs_train_size"]
    ]
    report_rows = [[f"{e['val_samples']:,}", ms(e["report_s"])] for e in r["report_vs_val_size"]]
    first, last = r["epoch_vs_train_size"][0], r["epoch_vs_train_size"][-1]
    growth = (last["epoch_s"] / first["epoch_s"]) / (last["train_samples"] / first["train_samples"])
    rfirst, rlast = r["report_vs_val_size"][0], r["report_vs_val_size"][-1]
    return (
        table(["training samples", "epoch", "per sample"], epoch_rows)
        + f"\n\nEpoch time grows {growth:.2f}x as fast as the data (1.00 = linear)."
        + "\n\n![epoch time vs training-set size](bench/plots/epoch_vs_train_size.png)\n\n"
        + table(["validation samples", "report phase"], report_rows)
        + f"\n\n{rlast['val_samples'] // rfirst['val_samples']}x the validation samples: "
        f"{rlast['report_s'] / rfirst['report_s']:.2f}x the report time."
        + _report_steps(r.get("report_steps") or {})
        + _exporters(r.get("onnx_exporters") or {})
        + "\n\n![report time vs validation-set size](bench/plots/report_vs_val_size.png)\n\n"
        + "![list latency vs jobs](bench/plots/list_latency_vs_jobs.png)"
        + footer(r)
    )


def _exporters(block: dict[str, Any]) -> str:
    if not block.get("available"):
        return ""
    seconds = block["seconds"]
    names = list(seconds)
    ratio = seconds[names[0]] / seconds[names[1]]
    return (
        "\n\nONNX export of the same student, interleaved: "
        + ", ".join(f"{n} {ms(v)}" for n, v in seconds.items())
        + f" ({names[0]} / {names[1]}: {ratio:.1f}x)."
    )


def _report_steps(steps: dict[str, Any]) -> str:
    if not steps:
        return ""
    sizes = list(steps)
    names = list(dict.fromkeys(n for size in sizes for n in steps[size]["steps"]))
    rows = [[n] + [ms(steps[size]["steps"].get(n)) for size in sizes] for n in names]
    rows.append(
        ["everything else (reload, metrics.csv, ...)"] + [ms(steps[s]["rest_s"]) for s in sizes]
    )
    rows.append(["**report phase**"] + [ms(steps[s]["phase_s"]) for s in sizes])
    return "\n\nThe report phase step by step:\n\n" + table(
        ["step", *[f"{int(s):,} validation samples" for s in sizes]], rows
    )


def render_summary(results: dict[str, Result | None]) -> str:
    rows: list[list[str]] = []
    t = results.get("training")
    if t:
        for name, w in t["workloads"].items():
            for pair, row in w["ratios"].items():
                if row.get("target") is not None:
                    rows.append(
                        [
                            f"1. epoch time {pair} ({name})",
                            f"<= {row['target']:.2f}",
                            x(row["median"], 3),
                            verdict(row["met"]),
                        ]
                    )
            if not t["cache"]["available"]:
                rows.append(
                    [f"1. epoch time d/a ({name})", "<= 1.10", "not measured (no cache yet)", "-"]
                )
    a = results.get("api")
    if a:
        for db in ("sqlite", "postgres"):
            if a.get(db):
                ratio = a[db]["rps_ratio"]
                rows.append(
                    [
                        f"2. GET job / healthz requests/s ({db})",
                        ">= 0.5",
                        x(ratio["median"]),
                        verdict(ratio["met"]),
                    ]
                )
        for label, block in (a.get("list") or {}).items():
            ratio = block["p99_ratio_largest_smallest"]
            sizes = list(block["by_size"])
            rows.append(
                [
                    f"2. list p99, {int(sizes[-1]):,} / {int(sizes[0]):,} jobs ({label})",
                    "flat",
                    x(ratio["median"]),
                    verdict(ratio["median"] <= 1.25),
                ]
            )
        probe = a.get("deadlock_probe")
        if probe:
            rows.append(
                [
                    f"2. no stall at {probe['connections']} connections",
                    "none",
                    f"{probe['longest_stall_s']:.1f} s",
                    verdict(not probe["stalled"]),
                ]
            )
    q = results.get("queue")
    if q and "redis" in q["stacks"]:
        rows.append(
            [
                "3. submit -> running, median, Redis",
                f"<= {q['target_redis_median_s']} s",
                f"{q['stacks']['redis']['to_running_median_s']:.3f} s",
                verdict(q["met"]),
            ]
        )
    art = results.get("artifacts")
    if art:
        rows.append(
            [
                "4. download / disk read, 500 MB",
                ">= 0.8",
                x(art["ratio"]["median"]),
                verdict(art["ratio"]["met"]),
            ]
        )
        growth = art["server_rss_growth_mb"]["max"]
        rows.append(
            [
                "4. server RSS growth during download",
                "flat",
                f"+{growth:.1f} MB",
                verdict(growth < 0.1 * art["megabytes"]),
            ]
        )
        rows.append(
            [
                "4. Range resumes a broken download",
                "yes",
                "yes" if art["resume"]["sha256_matches"] else "no",
                verdict(art["resume"]["sha256_matches"]),
            ]
        )
    mp = results.get("metrics_path")
    if mp:
        for name, w in mp["workloads"].items():
            rows.append(
                [
                    f"5. reporting overhead, DatabaseReporter ({name})",
                    f"<= {100 * (mp['target_ratio'] - 1):.0f}% of epoch",
                    f"{w['inside_pct']:.2f}% inside the reporter; A/B wall ratio "
                    f"{w['ratio_vs_memory']['database']['median']:.3f}",
                    verdict(w["met"]),
                ]
            )
    sc = results.get("scaling")
    if sc:
        e = sc["epoch_vs_train_size"]
        growth = (e[-1]["epoch_s"] / e[0]["epoch_s"]) / (
            e[-1]["train_samples"] / e[0]["train_samples"]
        )
        rows.append(
            [
                "6. epoch time vs data size",
                "linear",
                f"{growth:.2f}x linear",
                verdict(growth < 1.25),
            ]
        )
    return table(["figure", "target", "measured", ""], rows)


# Plots ------------------------------------------------------------------------------------


def plots(results: dict[str, Result | None]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    written = []
    sc = results.get("scaling")
    if sc:
        e = sc["epoch_vs_train_size"]
        n = [row["train_samples"] for row in e]
        s = [row["epoch_s"] * 1000 for row in e]
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=110)
        ax.plot(n, s, "o-", label="measured")
        ax.plot(n, [s[0] * k / n[0] for k in n], "--", color="grey", label="linear from the first")
        ax.set(
            xlabel="training samples",
            ylabel="epoch time (ms)",
            title="Engine epoch time vs data size",
        )
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, "epoch_vs_train_size.png"))
        plt.close(fig)
        rep = sc["report_vs_val_size"]
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=110)
        ax.plot([row["val_samples"] for row in rep], [row["report_s"] * 1000 for row in rep], "o-")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set(
            xlabel="validation samples (log)",
            ylabel="report phase (ms)",
            title="Report time vs validation size",
        )
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, "report_vs_val_size.png"))
        plt.close(fig)
    a = results.get("api")
    if a and a.get("list"):
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=110)
        for (label, block), color in zip(a["list"].items(), ("C0", "C1"), strict=False):
            sizes = [int(k) for k in block["by_size"]]
            for pct, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
                ax.plot(
                    sizes,
                    [block["by_size"][str(k)][pct] for k in sizes],
                    style,
                    color=color,
                    label=f"{'limit=20' if label == 'all' else label} {pct[:3]}",
                )
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set(
            xlabel="jobs in the table (log)",
            ylabel="latency (ms)",
            title=f"GET /v1/jobs?limit=20, {a['connections']} connections",
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, "list_latency_vs_jobs.png"))
        plt.close(fig)
    return written


def _save(fig: Any, name: str) -> Path:
    path = PLOTS / name
    fig.savefig(path, metadata={"Software": None})
    return path


# Markers ----------------------------------------------------------------------------------

RENDERERS: dict[str, Callable[[Result], str]] = {
    "training": render_training,
    "api": render_api,
    "queue": render_queue,
    "artifacts": render_artifacts,
    "metrics_path": render_metrics_path,
    "scaling": render_scaling,
}


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + f"\n\n## {name}\n\n{block}\n"


def render() -> Path:
    results = {name: load(name) for name in RENDERERS}
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    text = replace_block(text, "summary", render_summary(results))
    for name, renderer in RENDERERS.items():
        result = results[name]
        if result is not None:
            text = replace_block(text, name, renderer(result))
    DOC.write_text(text)
    plots(results)
    return DOC


if __name__ == "__main__":
    print(render())
