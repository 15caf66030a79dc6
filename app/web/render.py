"""How pages are rendered and sent: the Jinja environment, the formatting filters (the
browser script formats the same way, so a live update never changes how a value reads)
and the headers every page carries."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.schemas import TERMINAL_STATUSES
from worker.kd.spec import TRANSFORMER_ARCHS

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"

# Our own script and styles only: no inline code, nothing from another origin.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def format_time(value: datetime | None) -> str:
    """`2024-05-01 12:00:05 UTC`; stored times are UTC even when SQLite drops the zone."""
    if value is None:
        return "—"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def format_percent(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def student_label(spec: dict[str, Any]) -> str:
    """`cnn (8, 16)` or `mlp (128, 64)`: the arch and its layer widths."""
    student = spec.get("student", {})
    arch = str(student.get("arch", "?"))
    widths = student.get("channels") if arch == "cnn" else student.get("hidden")
    if isinstance(widths, list) and widths:
        return f"{arch} ({', '.join(str(w) for w in widths)})"
    return arch


def is_transformer(spec: dict[str, Any]) -> bool:
    """A Hugging Face student: its loss is the task's, not temperature and alpha."""
    return spec.get("student", {}).get("arch") in TRANSFORMER_ARCHS


def loss_label(spec: dict[str, Any]) -> str | None:
    """What the student learns from, as the spec states it: `0.9·kd + 1·hint`, or
    `temperature 4.0 · alpha 0.9` for Hinton's loss; None for a transformer job that
    states no losses (its loss is the task's default, named by the report)."""
    recipe = spec.get("distillation") or {}
    if recipe.get("losses"):
        return " + ".join(f"{term['weight']:g}·{term['kind']}" for term in recipe["losses"])
    if is_transformer(spec):
        return None
    return f"temperature {recipe.get('temperature', '—')} · alpha {recipe.get('alpha', '—')}"


def is_finished(status: str) -> bool:
    return status in TERMINAL_STATUSES


@cache
def _static_version(name: str) -> str:
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]


def static_url(name: str) -> str:
    """The file's URL with its content hash, so a changed file is never served stale."""
    return f"/static/{name}?v={_static_version(name)}"


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)


templates = Jinja2Templates(directory=WEB_DIR / "templates")
templates.env.filters.update(
    when=format_time,
    percent=format_percent,
    student=student_label,
    finished=is_finished,
    transformer=is_transformer,
    loss=loss_label,
)
templates.env.globals["static_url"] = static_url


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
