"""Responses shared by the routers."""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import FileResponse
from pydantic import BaseModel


class LargeFileResponse(FileResponse):
    """A file sent in 1 MiB reads instead of Starlette's 64 KiB: 2.5x less server CPU per
    GB and 1.7x the throughput for model-sized downloads (BENCHMARKS.md, artifacts)."""

    chunk_size = 1024 * 1024


class JSONBytes(Response):
    """JSON already serialised (by `to_json`, in the threadpool): sent as it is."""

    media_type = "application/json"


def to_json(model: BaseModel) -> bytes:
    """The model as JSON in one pass (what FastAPI's response_model would send, without
    validating it a second time)."""
    return model.__pydantic_serializer__.to_json(model)
