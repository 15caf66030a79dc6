"""The wheel the Docker image installs: built from the source tree, installed elsewhere, it
must carry everything the API reads at run time (the dashboard's templates and static
files, the migrations) and serve the dashboard.

The wheel is installed with `--no-deps` into a target directory put first on PYTHONPATH of
the test's own interpreter, so its dependencies (torch among them) come from the
environment already installed instead of being downloaded again.
"""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import clean_env, free_port

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e


def _pip(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline with the setuptools already installed."""
    out = tmp_path_factory.mktemp("wheelhouse")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), ".", cwd=ROOT)
    (built,) = out.glob("distillery-*.whl")
    return built


def test_wheel_carries_dashboard_and_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for web_file in [
        *(ROOT / "app/web/templates").iterdir(),
        *(ROOT / "app/web/static").iterdir(),
    ]:
        assert web_file.relative_to(ROOT).as_posix() in names, f"{web_file.name} not in wheel"
    assert "migrations/script.py.mako" in names
    assert any(name.startswith("migrations/versions/0001") for name in names)


def test_installed_wheel_serves_dashboard(wheel: Path, tmp_path: Path) -> None:
    """Outside the source tree, the installed package migrates and serves `/` and its CSS."""
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel), cwd=tmp_path)
    run_dir = tmp_path / "run"  # no app/ here: only the installed copy can be imported
    run_dir.mkdir()
    env = clean_env(PYTHONPATH=str(site), DISTILLERY_DATA_DIR=str(tmp_path / "data"))

    where = subprocess.run(
        [sys.executable, "-c", "import app; print(app.__file__)"],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr

    migrate = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stderr

    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    api = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api", "--port", str(port)],
        cwd=run_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        page = _get_when_up(f"http://127.0.0.1:{port}/", api, tmp_path / "api.log")
        assert page.status_code == 200, page.text
        assert "<html" in page.text.lower() and "API key" in page.text
        css = httpx.get(f"http://127.0.0.1:{port}/static/app.css", timeout=10)
        assert css.status_code == 200 and css.text.strip()
    finally:
        api.terminate()
        api.wait(timeout=30)
        log.close()


def _get_when_up(url: str, process: subprocess.Popen[bytes], log: Path) -> httpx.Response:
    """GET `url` once the server answers; fail with its log if it exits first."""
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"the API exited with {process.returncode}:\n{tail}")
        try:
            return httpx.get(url, timeout=10)
        except httpx.TransportError:
            time.sleep(0.3)
