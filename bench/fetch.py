"""Read a whole file or HTTP body as fast as Python can, and say how fast: the client side
of the artifact benchmark, run as its own process. The bytes are read into one reused
1 MiB buffer and dropped.

Run: .venv/bin/python -m bench.fetch /path/to/file
     .venv/bin/python -m bench.fetch http://127.0.0.1:8000/v1/jobs/J/artifacts/N --header "A: B"
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from urllib.parse import urlsplit

CHUNK = 1024 * 1024


def read_file(path: str) -> int:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(view):
            total += n
    return total


def read_http(url: str, headers: dict[str, str]) -> tuple[int, int]:
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1":
        raise SystemExit("only 127.0.0.1 is fetched")
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    connection.request("GET", parts.path, headers=headers)
    response = connection.getresponse()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    while n := response.readinto(view):
        total += n
    connection.close()
    return response.status, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source")
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    start = time.perf_counter()
    status = 200
    if args.source.startswith("http://"):
        headers = dict(h.split(": ", 1) for h in args.header)
        status, total = read_http(args.source, headers)
    else:
        total = read_file(args.source)
    seconds = time.perf_counter() - start
    cpu = time.process_time()
    print(
        json.dumps(
            {
                "status": status,
                "bytes": total,
                "seconds": seconds,
                "mb_per_s": total / seconds / 1e6,
                "client_cpu_s": cpu,
            }
        )
    )


if __name__ == "__main__":
    main()
