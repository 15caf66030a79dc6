"""Choosing the S3 client: boto3 against obstore, on the same endpoint in one run.

moto's server mode (the endpoint the tests use) holds the bucket, on this machine. Each
round uploads one file from disk as a multipart upload (8 MiB parts) and downloads it
back to disk, once with each client, the order alternating between rounds; the figures
are medians over the rounds and the ratio obstore / boto3. The endpoint is a Python
server, so absolute MB/s are its own ceiling; the ratio says whether the client matters.

Run: .venv/bin/python -m bench.object_store_clients [--mb 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PART = 8 * 1024 * 1024
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def boto3_client(endpoint: str, bucket: str) -> tuple[Callable[..., None], Callable[..., None]]:
    import boto3
    from boto3.s3.transfer import TransferConfig

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=4)

    def put(key: str, source: Path) -> None:
        client.upload_file(str(source), bucket, key, Config=config)

    def get(key: str, target: Path) -> None:
        client.download_file(bucket, key, str(target), Config=config)

    return put, get


def obstore_client(endpoint: str, bucket: str) -> tuple[Callable[..., None], Callable[..., None]]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        bucket,
        endpoint=endpoint,
        region="us-east-1",
        access_key_id="bench",
        secret_access_key="bench",
        client_options={"allow_http": True},
    )

    def put(key: str, source: Path) -> None:
        obstore.put(store, key, source, chunk_size=PART, max_concurrency=4)

    def get(key: str, target: Path) -> None:
        with target.open("wb") as handle:
            for chunk in obstore.get(store, key).stream(min_chunk_size=PART):
                handle.write(chunk)

    return put, get


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = "bench"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    clients = {"boto3": boto3_client(endpoint, bucket), "obstore": obstore_client(endpoint, bucket)}
    times: dict[str, dict[str, list[float]]] = {n: {"put": [], "get": []} for n in clients}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        source.write_bytes(os.urandom(args.mb * 1024 * 1024))
        for round_ in range(args.rounds):
            order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
            for name in order:
                put, get = clients[name]
                key = f"{name}/{round_}"
                started = time.perf_counter()
                put(key, source)
                times[name]["put"].append(time.perf_counter() - started)
                target = Path(tmp) / f"{name}-{round_}"
                started = time.perf_counter()
                get(key, target)
                times[name]["get"].append(time.perf_counter() - started)
                assert target.stat().st_size == source.stat().st_size
                target.unlink()
    server.stop()
    print(f"| client | upload MB/s | download MB/s |  ({args.mb} MiB, {args.rounds} rounds)")
    print("| --- | --- | --- |")
    rates = {}
    for name, measured in times.items():
        up = args.mb / statistics.median(measured["put"])
        down = args.mb / statistics.median(measured["get"])
        rates[name] = (up, down)
        print(f"| {name} | {up:.0f} | {down:.0f} |")
    ratio_up = rates["obstore"][0] / rates["boto3"][0]
    ratio_down = rates["obstore"][1] / rates["boto3"][1]
    print(f"| obstore / boto3 | {ratio_up:.2f}x | {ratio_down:.2f}x |")


if __name__ == "__main__":
    main()
