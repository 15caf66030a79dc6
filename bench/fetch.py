"""Read a whole file or HTTP body as fast as Python can, and say how fast: the client side
of the artifact benchmark, run as its own process. The bytes are read into one reused
1 MiB buffer and dropped.

A redirect (`307` to an object store's presigned URL) is followed the way the Python client
does: to the `Location` given, without the request's headers (the API key stays with the
API); the time includes both requests.

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
REDIRECTS = {301, 302, 303, 307, 308}


def read_file(path: str) -> int:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(view):
            total += n
    return total


def read_http(url: str, headers: dict[str, str]) -> tuple[int, int, int]:
    """(final status, bytes read, redirects followed)."""
    redirects = 0
    while True:
        parts = urlsplit(url)
        if parts.hostname != "127.0.0.1":
            raise SystemExit("only 127.0.0.1 is fetched")
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        location = response.getheader("Location")
        if response.status in REDIRECTS and location and redirects < 3:
            response.read()
            connection.close()
            url, headers, redirects = location, {}, redirects + 1
            continue
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        total = 0
        while n := response.readinto(view):
            total += n
        connection.close()
        return response.status, total, redirects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source")
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    start = time.perf_counter()
    status, redirects = 200, 0
    if args.source.startswith("http://"):
        headers = dict(h.split(": ", 1) for h in args.header)
        status, total, redirects = read_http(args.source, headers)
    else:
        total = read_file(args.source)
    seconds = time.perf_counter() - start
    cpu = time.process_time()
    print(
        json.dumps(
            {
                "status": status,
                "redirects": redirects,
                "bytes": total,
                "seconds": seconds,
                "mb_per_s": total / seconds / 1e6,
                "client_cpu_s": cpu,
            }
        )
    )


if __name__ == "__main__":
    main()
