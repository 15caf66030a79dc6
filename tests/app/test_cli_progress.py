"""`distillery watch` in an 80-column terminal: the bar keeps its width, elapsed time and
ETA print whole, and the epoch line fits."""

from __future__ import annotations

import io

import httpx
from rich.console import Console

from app.cli_client import _transformer_detail, make_progress
from app.client import Client
from app.schemas import JobPublic


def render_at(width: int, detail: str) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    progress = make_progress(console)
    task = progress.add_task("job_1", total=1.0, status="running", detail=detail)
    progress.start_task(task)
    progress.update(task, completed=0.42)
    console.print(progress.get_renderable())
    return console.file.getvalue().splitlines()  # type: ignore[attr-defined]


def test_progress_fits_80_columns() -> None:
    detail = "epoch 12/15  step 1234  loss 0.08123  val acc 0.9812"
    bar_line, detail_line = render_at(80, detail)
    assert "…" not in bar_line, bar_line
    bar_cells = bar_line.index("42.0%") - bar_line.index("━") - 1
    assert bar_cells >= 25, bar_line
    assert "42.0%" in bar_line and "ETA" in bar_line
    assert bar_line.count(":") >= 4, bar_line  # h:mm:ss elapsed and remaining, whole
    assert detail_line.strip() == detail
    assert max(len(line) for line in (bar_line, detail_line)) <= 80


def test_transformer_jobs_show_epoch_loss_and_quality() -> None:
    """Transformer jobs write `train_loss` and `val_accuracy` points, no epoch events."""
    points = {
        "train_loss": [(1, 10, 0.9), (2, 20, 0.25)],
        "val_accuracy": [(1, 10, 0.41)],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/jobs/job_1/metrics"
        name = request.url.params["name"]
        data = [
            {"name": name, "epoch": e, "step": s, "value": v, "ts": "2026-01-01T00:00:00Z"}
            for e, s, v in points.get(name, [])
        ]
        return httpx.Response(200, json={"object": "list", "data": data})

    client = Client("http://test", "dk", transport=httpx.MockTransport(handler))
    job = JobPublic.model_validate(
        {
            "id": "job_1", "status": "running", "progress": 0.5, "error": None, "result": None,
            "attempt": 1, "created_at": "2026-01-01T00:00:00Z", "started_at": None,
            "finished_at": None,
            "spec": {"student": {"arch": "from_teacher"}, "training": {"epochs": 3}},
        }
    )  # fmt: skip
    assert _transformer_detail(client, job) == "epoch 2/3  step 20  loss 0.25  val quality 0.4100"
