"""`distillery`: run the service (up, api, worker, migrate) and manage API keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from app.cli_client import register as register_client_commands
from app.cli_client import write_client_config

cli = typer.Typer(help="Distillery: knowledge distillation as a service.", no_args_is_help=True)
keys_cli = typer.Typer(help="Create and revoke API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
register_client_commands(cli)
console = Console(stderr=True)

LOCAL_TENANT = "local"
LOCAL_KEY_FILE = "local-api-key"

HostOpt = Annotated[str, typer.Option(help="Interface to listen on.")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on.")]


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema (safe to run again)."""
    from app.migrate import upgrade_head

    upgrade_head()
    console.print("database is at the newest schema")


@cli.command()
def api(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """Serve the REST API."""
    import uvicorn

    uvicorn.run("app.main:app", host=host, port=port, log_level="info", proxy_headers=True)


@cli.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    quiet: Annotated[bool, typer.Option(help="No start-up banner.")] = False,
    queues: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated queues to take jobs from, e.g. a100,default "
            "(default: DISTILLERY_QUEUE). The control queue is always served."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="CPU threads for training (default: DISTILLERY_WORKER_THREADS; 0: torch's "
            "default, every core). Give each of several workers on one machine its share.",
        ),
    ] = None,
) -> None:
    """Run one Celery worker process (one job at a time; run one per GPU)."""
    import socket

    from app.config import get_settings
    from worker.celery_app import celery_app

    settings = get_settings()
    served = [q.strip() for q in (queues or settings.queue).split(",") if q.strip()]
    if not served:
        raise typer.BadParameter("name at least one queue", param_hint="--queues")
    count = settings.worker_threads if threads is None else threads
    if count:
        # Read by torch's OpenMP/MKL when torch loads (first job), and inherited by the
        # processes of a multi-process job: workers sharing cores don't oversubscribe them.
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(count)

    celery_app.worker_main(
        [
            *(["--quiet"] if quiet else []),
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={','.join(dict.fromkeys([*served, settings.control_queue]))}",
            f"--loglevel={loglevel}",
            f"--hostname=distillery-{os.getpid()}@{socket.gethostname()}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@keys_cli.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key acts for; created if new.")],
) -> None:
    """Create an API key; the key is printed once, on the last line."""
    from app.db import session_scope
    from app.services.keys import create_key

    with session_scope() as session:
        key = create_key(session, tenant)
    console.print(f"created a key for tenant {tenant!r}; keep it secret, it is shown once:")
    print(key)


@keys_cli.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key, or its prefix as shown at creation.")],
) -> None:
    """Revoke an API key."""
    from app.db import session_scope
    from app.services.keys import revoke_key

    with session_scope() as session:
        count = revoke_key(session, key)
    if count == 0:
        console.print("no active key matches")
        raise typer.Exit(1)
    console.print(f"revoked {count} key(s)")


def _local_key(data_dir: Path) -> str:
    """The `local` tenant's key: created on the first run, kept (0600) in the data dir."""
    from app.auth import lookup
    from app.db import session_scope
    from app.security import hash_key
    from app.services.keys import create_key

    path = data_dir / LOCAL_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        with session_scope() as session:
            if lookup(session, hash_key(key)) is not None:
                return key
    with session_scope() as session:
        key = create_key(session, LOCAL_TENANT)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


@cli.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="Where data, files and artifacts live.")] = Path(
        "data"
    ),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
) -> None:
    """Everything on one machine, no servers: migrate, then the API and one worker."""
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DISTILLERY_DATA_DIR"] = str(data_dir)
    from app.config import get_settings

    get_settings.cache_clear()
    from app.migrate import upgrade_head

    upgrade_head()
    key = _local_key(data_dir)
    base = [sys.executable, "-m", "app.cli"]
    children = {
        "api": subprocess.Popen([*base, "api", "--host", host, "--port", str(port)]),
        "worker": subprocess.Popen([*base, "worker", "--loglevel", "WARNING", "--quiet"]),
    }
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    config = write_client_config(f"http://{shown}:{port}", key)
    console.print(f"Distillery is up at http://{shown}:{port} (data in {data_dir})")
    console.print(f"The CLI (distillery submit, watch, jobs, ...) reads URL and key from {config}")
    console.print(f"API docs: http://{shown}:{port}/docs   Ctrl-C stops it.")
    console.print(f"API key for tenant {LOCAL_TENANT!r}:")
    print(key, flush=True)
    _supervise(children)


def _supervise(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """Wait until Ctrl-C, SIGTERM or a child's exit; then stop every child."""
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    # Handled explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stopping and all(child.poll() is None for child in children.values()):
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.terminate()  # uvicorn and Celery both shut down gracefully on SIGTERM
    deadline = time.monotonic() + 15
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    failed = {n: c.returncode for n, c in children.items() if c.returncode not in (0, -15, None)}
    if failed and not stopping:
        console.print(f"stopped everything: a process exited early (exit codes {failed})")
        raise typer.Exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
