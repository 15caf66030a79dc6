"""Checks of the production deployment files: docker-compose.yml and Dockerfile.

These need the Compose CLI (Debian: `apt-get install -y docker-compose`) but no Docker
daemon: `config` only validates and normalizes the file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def _compose_cmd() -> list[str]:
    """The Compose CLI: Debian's `docker-compose` (v1.29) or the `docker compose` plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=60
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.fail(
        "Neither `docker-compose` nor `docker compose` is on PATH; "
        "install it with `apt-get install -y docker-compose`."
    )


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_compose_cmd(), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _services_from_text(text: str) -> dict[str, str]:
    """Fallback without PyYAML: each service's block of the normalized config, as text."""
    blocks: dict[str, str] = {}
    in_services = False
    name: str | None = None
    for line in text.splitlines():
        if re.match(r"^\S", line):
            in_services = line.rstrip() == "services:"
            name = None
            continue
        if not in_services:
            continue
        head = re.match(r"^  ([A-Za-z0-9_.-]+):\s*$", line)
        if head:
            name = head.group(1)
            blocks[name] = ""
        elif name is not None:
            blocks[name] += line + "\n"
    return blocks


def _normalized_config() -> dict[str, Any]:
    """Services of the normalized config: parsed dicts, or text blocks without PyYAML."""
    result = _compose("config")
    assert result.returncode == 0, result.stderr
    try:
        import yaml
    except ImportError:
        json_result = _compose("config", "--format", "json")  # Compose v2 only
        if json_result.returncode == 0:
            try:
                services: dict[str, Any] = json.loads(json_result.stdout)["services"]
            except (ValueError, KeyError):  # v1 ignores --format and prints YAML
                pass
            else:
                return services
        return _services_from_text(result.stdout)
    parsed: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return parsed


def _as_list(command: Any) -> list[str]:
    if isinstance(command, str):
        return command.split()
    return [str(part) for part in command or []]


def test_compose_config_is_valid() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"


def test_compose_services_and_dockerfile() -> None:
    services = _normalized_config()
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    worker, api, migrate = services["worker"], services["api"], services["migrate"]

    if isinstance(worker, str):  # text fallback
        assert re.search(r"driver: nvidia", worker), worker
        assert re.search(r"-\s*gpu", worker), worker
        assert "healthcheck:" in api and "/readyz" in api, api
        assert re.search(r"distillery\s*\n\s*- migrate|distillery migrate", migrate), migrate
    else:
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert any(
            d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
        ), devices
        assert _as_list(worker["command"]) == ["distillery", "worker"]
        assert api.get("healthcheck", {}).get("test"), "api has no healthcheck"
        assert "/readyz" in " ".join(_as_list(api["healthcheck"]["test"]))
        assert _as_list(migrate["command"]) == ["distillery", "migrate"]
        assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"

    users = re.findall(r"^\s*USER\s+(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert users, "Dockerfile sets no USER"
    assert users[-1] not in {"root", "0", "0:0"}, f"final USER is {users[-1]}"


def test_compose_keeps_bytes_in_object_storage_and_routes_by_queue() -> None:
    """API and workers share no volume: their bytes are in the MinIO bucket, which a one-shot
    creates before they start; a CPU worker serves its own queue beside the GPU worker."""
    services = _normalized_config()
    assert {"minio", "minio-bucket", "worker-cpu"} <= set(services)
    if any(isinstance(service, str) for service in services.values()):
        pytest.skip("needs PyYAML to read the normalized config")
    distillery = ("migrate", "api", "worker", "worker-cpu")
    for name in distillery:
        service = services[name]
        assert not service.get("volumes"), f"{name} mounts {service['volumes']}"
        assert str(service["environment"]["DISTILLERY_STORAGE_URL"]).startswith("s3://")
        assert service["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    for name in ("api", "worker", "worker-cpu"):
        condition = services[name]["depends_on"]["minio-bucket"]["condition"]
        assert condition == "service_completed_successfully", name
    bucket = services["minio-bucket"]
    assert "mc mb" in " ".join(_as_list(bucket["entrypoint"]))
    assert bucket.get("restart") in ("no", None)
    command = _as_list(services["worker-cpu"]["command"])
    assert command[:2] == ["distillery", "worker"] and "--queues" in command
    assert command[command.index("--queues") + 1] == "cpu"
    assert "deploy" not in services["worker-cpu"], "the CPU worker reserves no GPU"
