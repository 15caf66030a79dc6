"""A closed-loop HTTP/1.1 load generator, for machines without `wrk`.

N keep-alive connections each send the next GET as soon as the last response has been read
in full, for a fixed time; prints wrk's figures as JSON (requests/s, p50/p75/p90/p99 in
ms, non-2xx count). Only 127.0.0.1 is accepted.

Run: .venv/bin/python -m bench.loadgen http://127.0.0.1:8000/healthz --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

from bench.common import percentile


async def _worker(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    latencies: list[float],
    statuses: list[int],
) -> int:
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                errors += 1
                break
            length = 0
            chunked = False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readline()).strip() or b"0", 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            latencies.append((time.perf_counter() - start) * 1000)
            statuses.append(int(status_line.split()[1]))
    finally:
        writer.close()
    return errors


async def run(url: str, seconds: float, connections: int, headers: list[str]) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1":
        raise SystemExit("load is only ever sent to 127.0.0.1")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", *headers, "", ""]
    request = "\r\n".join(lines).encode()
    latencies: list[float] = []
    statuses: list[int] = []
    start = time.perf_counter()
    deadline = start + seconds
    errors = await asyncio.gather(
        *[
            _worker(parts.hostname, parts.port or 80, request, deadline, latencies, statuses)
            for _ in range(connections)
        ],
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - start
    return {
        "tool": "bench.loadgen",
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        **{f"p{q}_ms": percentile(latencies, q) for q in (50, 75, 90, 99)},
        "non_2xx": sum(1 for s in statuses if not 200 <= s < 400),
        "socket_errors": sum(e if isinstance(e, int) else 1 for e in errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.seconds, args.connections, args.header))))


if __name__ == "__main__":
    main()
