"""The architecture's import rules. Static imports are checked by import-linter's contracts
(pyproject.toml, [tool.importlinter]; `make lint` runs them, and so does the first test);
the second test checks, in fresh interpreters, what importing really loads, which also
covers imports made at run time that import-linter cannot see."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def loaded(modules: list[str], watched: list[str]) -> list[str]:
    """Which of `watched` a fresh interpreter has loaded after importing `modules`."""
    code = (
        f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
        f"import json; print(json.dumps([m for m in {watched!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_linter_contracts_hold() -> None:
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:]


def test_app_loads_no_torch_and_the_engine_no_web_code() -> None:
    app_side = [
        "app.main", "app.cli_client", "app.formats", "worker.kd.spec",
        "worker.kd.report.schema", "worker.kd.report.summary", "worker.kd.formats",
        "worker.kd.datasets.table", "worker.kd.datasets.layout",
    ]  # fmt: skip
    assert loaded(app_side, ["torch", "PIL", "sklearn", "transformers"]) == []
    engine = ["worker.kd.engine", "worker.kd.losses"]
    assert loaded(engine, ["fastapi", "celery", "sqlalchemy", "app"]) == []
