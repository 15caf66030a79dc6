"""Section 4, object store: an artifact downloaded by redirect against streamed through the API.

An S3 endpoint (moto's server, `python -m moto.server`, the one the tests use, in its own
process) holds one artifact, put there by `S3Storage.put_artifact` as a worker does; one
SQLite database records it. Two API processes serve it from the same bucket
(DISTILLERY_STORAGE_URL=s3://...), one per setting, and a client process (bench/fetch.py)
downloads `GET /v1/jobs/{id}/artifacts/{name}` from each, interleaved, repeated:

- `redirect` (DISTILLERY_DOWNLOADS=redirect, the default on an object store): the API
  answers `307` to a presigned URL and the client fetches the bytes from the store,
  without the API key;
- `stream` (DISTILLERY_DOWNLOADS=stream): the API reads the object from the store (boto3)
  and streams it to the client.

Figures: MB/s of each (the redirect's time includes both requests) and their ratio; the
CPU seconds per GB of the API process and of the store process during each download (the
point of the redirect: the API does no byte work); the API's RSS growth during each.
moto is a Python server on the same two cores: it is the ceiling of both paths here.

Run: .venv/bin/python -m bench.downloads [--quick] [--mb 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import servers
from bench.artifacts import RssSampler, fetch, make_artifact, record_artifact
from bench.common import (
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
    x,
)

# moto accepts any credentials; boto3 (here and in the API processes) reads these.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BUCKET = "distillery-bench"
MODES = ("redirect", "stream")


def start_store(procs: servers.Processes) -> tuple[str, int]:
    """moto's S3 server on a free port of 127.0.0.1; returns (endpoint, pid)."""
    port = servers.free_port()
    child = procs.start(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        servers.clean_env(**AWS_ENV),
    )
    endpoint = f"http://127.0.0.1:{port}"
    servers.wait_up(endpoint, procs, "/")
    return endpoint, child.pid


def put_artifact(storage_url: str, work: Path, job_id: str, mb: int) -> tuple[str, int, str]:
    """Write the artifact locally, put it in the store as a worker does, delete the local copy;
    returns (relative path, bytes, sha256)."""
    from app.storage import S3Storage

    path, _, _ = make_artifact(work / "source", job_id, mb)
    storage = S3Storage(storage_url, work / "tmp", work, None)
    storage.client.create_bucket(Bucket=BUCKET)
    stored = storage.put_artifact(job_id, "big.bin", path)
    path.unlink()
    return stored


def measure(args: argparse.Namespace) -> Result:
    mb = 64 if args.quick else args.mb
    rounds = 3 if args.quick else args.rounds
    load = LoadMeter()
    with (
        tempfile.TemporaryDirectory(dir=args.work) as tmp,
        servers.processes(Path(tmp) / "logs") as procs,
    ):
        work = Path(tmp)
        endpoint, store_pid = start_store(procs)
        os.environ.update(AWS_ENV, AWS_ENDPOINT_URL=endpoint)  # for boto3 here and the APIs
        storage_url = f"s3://{BUCKET}/bench"
        data_dir = work / "data"
        seeded = servers.seed(servers.sqlite_url(data_dir), 1)
        job_id = seeded.job_ids[0]
        log(f"putting a {mb} MB artifact in the store")
        relative, size, sha256 = put_artifact(storage_url, work, job_id, mb)
        record_artifact(seeded.url, job_id, "big.bin", relative, size, sha256)
        apis: dict[str, tuple[str, int]] = {}
        for mode in MODES:
            base, api = servers.start_api(
                procs,
                f"api-{mode}",
                data_dir,
                DISTILLERY_STORAGE_URL=storage_url,
                DISTILLERY_DOWNLOADS=mode,
            )
            apis[mode] = (f"{base}/v1/jobs/{job_id}/artifacts/big.bin", api.pid)
        for mode in MODES:
            servers.wait_up(apis[mode][0].split("/v1/")[0], procs)
        auth = {"Authorization": f"Bearer {seeded.key}"}
        for mode in MODES:  # warm-up: imports, the first request, boto3's client
            fetch(apis[mode][0], auth)
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for r in range(rounds):
            for mode in rotate(list(MODES), r):
                url, api_pid = apis[mode]
                api_before = servers.cpu_seconds(api_pid)
                store_before = servers.cpu_seconds(store_pid)
                with RssSampler(api_pid) as rss:
                    run = fetch(url, auth)
                run["api_cpu_s"] = servers.cpu_seconds(api_pid) - api_before
                run["store_cpu_s"] = servers.cpu_seconds(store_pid) - store_before
                run["api_rss_growth_mb"] = rss.growth_mb
                expected_redirects = 1 if mode == "redirect" else 0
                if (
                    run["bytes"] != size
                    or run["status"] != 200
                    or run["redirects"] != expected_redirects
                ):
                    raise RuntimeError(f"{mode} read {run} of {size} bytes")
                runs[mode].append(run)
            log(
                f"  round {r + 1}/{rounds}: "
                + ", ".join(
                    f"{m} {runs[m][-1]['mb_per_s']:.0f} MB/s, API {runs[m][-1]['api_cpu_s']:.2f} "
                    f"CPU s"
                    for m in MODES
                )
            )

    def per_gb(mode: str, key: str) -> float:
        return median([run[key] / (run["bytes"] / 1e9) for run in runs[mode]])

    speeds = {mode: [run["mb_per_s"] for run in runs[mode]] for mode in MODES}
    return {
        "quick": args.quick,
        "megabytes": mb,
        "rounds": rounds,
        "store": "moto server (Python, this machine)",
        "mb_per_s": {mode: median(speeds[mode]) for mode in MODES},
        "ratio": paired_ratio(speeds["redirect"], speeds["stream"]),
        "api_cpu_s_per_gb": {mode: per_gb(mode, "api_cpu_s") for mode in MODES},
        "api_cpu_s_per_download": {
            mode: median([run["api_cpu_s"] for run in runs[mode]]) for mode in MODES
        },
        "store_cpu_s_per_gb": {mode: per_gb(mode, "store_cpu_s") for mode in MODES},
        "api_rss_growth_mb": {
            mode: max(run["api_rss_growth_mb"] for run in runs[mode]) for mode in MODES
        },
        "runs": runs,
        "load": load.stop(),
    }


LABELS = {
    "redirect": "redirect: `307` to a presigned URL, bytes from the store",
    "stream": "stream: bytes through the API from the store",
}


def rows(r: Result) -> list[Table]:
    table_rows = [
        [
            LABELS[mode],
            f"{r['mb_per_s'][mode]:.0f}",
            f"{r['api_cpu_s_per_gb'][mode]:.2f}",
            f"{1000 * r['api_cpu_s_per_download'][mode]:.0f} ms",
            f"{r['store_cpu_s_per_gb'][mode]:.2f}",
            f"+{r['api_rss_growth_mb'][mode]:.1f} MB",
        ]
        for mode in MODES
    ]
    ratio = r["ratio"]
    api = r["api_cpu_s_per_gb"]
    note = (
        f"- Redirect / stream, MB/s: **{ratio['median']:.2f}**{rng(ratio)}. API CPU per GB: "
        f"{api['redirect']:.2f} s redirected against {api['stream']:.2f} s streamed (CPU "
        "time is read from /proc in 10 ms ticks: a redirect costs the API at most a tick or "
        "two, whatever the size)."
        "\n- The store is moto's S3 server, a Python process on this machine: it is the ceiling "
        "of both paths, and shares the two cores with the API and the client."
        f"\n\n{r['megabytes']} MB artifact, {r['rounds']} rounds, variants interleaved."
    )
    header = [
        "download (object store)",
        "MB/s (median)",
        "API CPU s per GB",
        "API CPU per download",
        "store CPU s per GB",
        "API RSS growth, max",
    ]
    return [Table(header, table_rows, note=note)]


def targets(r: Result) -> list[Row]:
    api = r["api_cpu_s_per_gb"]
    return [
        [
            f"4. download via redirect / streamed, object store, {r['megabytes']} MB",
            "-",
            x(r["ratio"]["median"]),
            "",
        ],
        [
            "4. API CPU s per GB, redirect vs streamed",
            "-",
            f"{api['redirect']:.2f} vs {api['stream']:.2f}",
            "",
        ],
    ]


def parser() -> argparse.ArgumentParser:
    options = section_parser(__doc__ or "")
    options.add_argument("--mb", type=int, default=200)
    options.add_argument("--rounds", type=int, default=9)
    return options


if __name__ == "__main__":
    run_section("downloads", measure, parser())
