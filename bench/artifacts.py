"""Section 4: downloading a 500 MB artifact.

A succeeded job with one 500 MB artifact is made directly (an `Artifact` row and its file
under the data dir, as the worker stores them); `python -m app.cli api` serves it. A client
process (bench/fetch.py) reads the same bytes, variants interleaved, repeated:

- `disk`: straight from the file, its pages dropped from the page cache first
  (posix_fadvise DONTNEED), so it really comes from the disk;
- `http`: `GET /v1/jobs/{id}/artifacts/{name}`, the file's pages dropped the same way;
- `disk (page cache)`, `http (page cache)`: both again with the file cached: the ceiling
  of each path, which shows what the server itself costs.

Figures:
- throughput ratio, HTTP / disk, both from disk [target >= 0.8], and from the page cache;
  the server's CPU seconds per GB;
- the server's RSS (VmRSS, sampled every 20 ms) during each download, minus before it
  [flat: streamed, not buffered];
- resume: a download broken off after 40% of the bytes, then `Range: bytes=N-`: the
  status, `Content-Range`, and whether the two parts hash to the artifact's sha256.

Run: .venv/bin/python -m bench.artifacts [--quick] [--mb 500]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import servers
from bench.common import (
    ROOT,
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

TARGET = 0.8
BLOCK = 8 * 1024 * 1024


def make_artifact(data_dir: Path, job_id: str, mb: int) -> tuple[Path, str, int]:
    path = data_dir / "artifacts" / job_id / "big.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, size=BLOCK, dtype=np.uint8).tobytes()
    size = mb * 1000 * 1000
    with path.open("wb") as handle:
        written = 0
        while written < size:
            # Vary each block a little so that no layer can dedupe or compress it away.
            chunk = written.to_bytes(8, "little") + block[8 : min(BLOCK, size - written)]
            handle.write(chunk)
            digest.update(chunk)
            written += len(chunk)
        handle.flush()
        os.fsync(handle.fileno())  # clean pages, so that DONTNEED can drop them
    return path, digest.hexdigest(), size


def record_artifact(
    url: str, job_id: str, name: str, relative: str, size: int, sha256: str
) -> None:
    """Mark the job succeeded with one artifact, stored at `relative`, as the worker does."""
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from app.db import make_engine
    from app.models import Artifact, Job

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            session.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
            session.add(
                Artifact(job_id=job_id, name=name, bytes=size, sha256=sha256, path=relative)
            )
            session.commit()
    finally:
        engine.dispose()


def drop_from_cache(path: Path) -> None:
    """Evict this one file's pages from the page cache (no effect on anything else)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class RssSampler:
    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid, self.every = pid, every
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(servers.rss_bytes(self.pid))
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self.before = servers.rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (max(self.samples, default=self.before) - self.before) / 1e6


def fetch(source: str, headers: dict[str, str]) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.fetch", source]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    done = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT, timeout=600)
    return dict(json.loads(done.stdout))


def resume(url: str, key: str, sha256: str, size: int) -> dict[str, Any]:
    """Break a download off after 40%, then ask for the rest with a Range header."""
    auth = {"Authorization": f"Bearer {key}"}
    digest = hashlib.sha256()
    got = 0
    cut = int(size * 0.4)
    with httpx.Client(headers=auth, timeout=120) as client:
        with client.stream("GET", url) as response:
            accept_ranges = response.headers.get("accept-ranges")
            for chunk in response.iter_raw(1024 * 1024):
                digest.update(chunk)
                got += len(chunk)
                if got >= cut:
                    break  # the connection is closed here, mid-body
        with client.stream("GET", url, headers={"Range": f"bytes={got}-"}) as response:
            status = response.status_code
            content_range = response.headers.get("content-range")
            rest = 0
            for chunk in response.iter_raw(1024 * 1024):
                digest.update(chunk)
                rest += len(chunk)
    return {
        "accept_ranges": accept_ranges,
        "first_part_bytes": got,
        "range_status": status,
        "content_range": content_range,
        "rest_bytes": rest,
        "sha256_matches": status == 206 and got + rest == size and digest.hexdigest() == sha256,
    }


def measure(args: argparse.Namespace) -> Result:
    mb = 100 if args.quick else args.mb
    rounds = 2 if args.quick else 9
    load = LoadMeter()
    with (
        tempfile.TemporaryDirectory(dir=args.work) as tmp,
        servers.processes(Path(tmp) / "logs") as procs,
    ):
        work = Path(tmp)
        data_dir = work / "data"
        seeded = servers.seed(servers.sqlite_url(data_dir), 1)
        job_id = seeded.job_ids[0]
        log(f"writing a {mb} MB artifact")
        path, sha256, size = make_artifact(data_dir, job_id, mb)
        record_artifact(seeded.url, job_id, "big.bin", f"{job_id}/big.bin", size, sha256)
        base, api = servers.start_api(procs, "api", data_dir)
        servers.wait_up(base, procs)
        url = f"{base}/v1/jobs/{job_id}/artifacts/big.bin"
        auth = {"Authorization": f"Bearer {seeded.key}"}
        # name: (source, server pid or None, from disk)
        variants: dict[str, tuple[str, int | None, bool]] = {
            "disk": (str(path), None, True),
            "http": (url, api.pid, True),
            "disk (page cache)": (str(path), None, False),
            "http (page cache)": (url, api.pid, False),
        }  # fmt: skip
        for source, pid, _ in variants.values():  # warm-up: imports, first requests
            if pid is not None:
                fetch(source, auth)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for r in range(rounds):
            for name in rotate(list(variants), r):
                source, pid, cold = variants[name]
                if cold:
                    drop_from_cache(path)
                else:
                    fetch(str(path), {})  # make sure every page is cached
                watched = pid or api.pid
                cpu_before = servers.cpu_seconds(watched)
                with RssSampler(watched) as rss:
                    run = fetch(source, {} if pid is None else auth)
                run["server_rss_growth_mb"] = rss.growth_mb
                run["server_rss_before_mb"] = rss.before / 1e6
                run["server_cpu_s"] = servers.cpu_seconds(watched) - cpu_before
                if run["bytes"] != size or run["status"] != 200:
                    raise RuntimeError(f"{name} read {run} of {size} bytes")
                runs[name].append(run)
            log(
                f"  round {r + 1}/{rounds}: "
                + ", ".join(f"{n} {runs[n][-1]['mb_per_s']:.0f} MB/s" for n in variants)
                + f"; server RSS +{runs['http'][-1]['server_rss_growth_mb']:.1f} MB"
            )
        log("resume with a Range request")
        resumed = resume(url, seeded.key, sha256, size)
        log(f"  {resumed}")

    def speeds(name: str) -> list[float]:
        return [r["mb_per_s"] for r in runs[name]]

    ratio = paired_ratio(speeds("http"), speeds("disk"))
    http_rss = [r["server_rss_growth_mb"] for name in runs if "http" in name for r in runs[name]]
    return {
        "quick": args.quick,
        "megabytes": mb,
        "rounds": rounds,
        "mb_per_s": {name: median(speeds(name)) for name in runs},
        "ratio": {**ratio, "target": TARGET, "met": ratio["median"] >= TARGET},
        "ratio_page_cache": paired_ratio(speeds("http (page cache)"), speeds("disk (page cache)")),
        "server_cpu_s_per_gb": {
            name: median([r["server_cpu_s"] / (r["bytes"] / 1e9) for r in runs[name]])
            for name in runs
            if "http" in name
        },
        "server_rss_growth_mb": {"median": median(http_rss), "max": max(http_rss)},
        "server_rss_before_mb": runs["http"][0]["server_rss_before_mb"],
        "resume": resumed,
        "runs": runs,
        "load": load.stop(),
    }


def rows(r: Result) -> list[Table]:
    speed_rows = []
    for name, speed in r["mb_per_s"].items():
        cpu = r["server_cpu_s_per_gb"].get(name)
        speed_rows.append([name, f"{speed:.0f}", "-" if cpu is None else f"{cpu:.2f}"])
    ratio, cached, resume = r["ratio"], r["ratio_page_cache"], r["resume"]
    growth = r["server_rss_growth_mb"]
    note = (
        f"- HTTP / disk (both from disk): **{ratio['median']:.2f}**{rng(ratio)} "
        f"[target >= {ratio['target']}: {verdict(ratio['met'])}]; both from the page cache: "
        f"{cached['median']:.2f}{rng(cached)}."
        f"\n- Server RSS during a download: +{growth['median']:.1f} MB median, "
        f"+{growth['max']:.1f} MB at most, on {r['server_rss_before_mb']:.0f} MB, for a "
        f"{r['megabytes']} MB file: streamed [flat: {verdict(streamed(r))}]."
        f"\n- Resume: full response says `Accept-Ranges: {resume['accept_ranges']}`; broken "
        f"off after {resume['first_part_bytes']:,} bytes, "
        f"`Range: bytes={resume['first_part_bytes']}-` "
        f"answered {resume['range_status']} with `Content-Range: {resume['content_range']}`; "
        f"the two parts hash to the artifact's sha256: "
        f"{'yes' if resume['sha256_matches'] else '**no**'}."
        f"\n\n{r['rounds']} rounds, variants interleaved."
    )
    return [Table(["read", "MB/s (median)", "server CPU s per GB"], speed_rows, note=note)]


def streamed(r: Result) -> bool:
    """The server's memory stayed flat: it grew by less than a tenth of the file."""
    return bool(r["server_rss_growth_mb"]["max"] < 0.1 * r["megabytes"])


def targets(r: Result) -> list[Row]:
    matches = r["resume"]["sha256_matches"]
    return [
        [
            f"4. download / disk read, {r['megabytes']} MB",
            f">= {r['ratio']['target']}",
            x(r["ratio"]["median"]),
            verdict(r["ratio"]["met"]),
        ],
        [
            "4. server RSS growth during download",
            "flat",
            f"+{r['server_rss_growth_mb']['max']:.1f} MB",
            verdict(streamed(r)),
        ],
        ["4. Range resumes a broken download", "yes", "yes" if matches else "no", verdict(matches)],
    ]


def parser() -> argparse.ArgumentParser:
    options = section_parser(__doc__ or "")
    options.add_argument("--mb", type=int, default=500)
    return options


if __name__ == "__main__":
    run_section("artifacts", measure, parser())
