"""Responses shared by the routers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import Response
from fastapi.responses import FileResponse
from pydantic import BaseModel

READ_AHEAD = 32 * 1024 * 1024


class LargeFileResponse(FileResponse):
    """A file sent in 4 MiB reads instead of Starlette's 64 KiB (a quarter of the server
    CPU per GB), each read asking the kernel to start fetching the next 32 MiB, so the
    disk works ahead while the previous chunk is on the wire (BENCHMARKS.md, artifacts).
    Range requests and HEAD are FileResponse's own."""

    chunk_size = 4 * 1024 * 1024

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[Any]:
        async with super()._open_file() as file:
            yield _ReadAhead(file) if hasattr(os, "posix_fadvise") else file


class _ReadAhead:
    """The parts of anyio's AsyncFile that FileResponse uses, with read-ahead hints."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.raw = file.wrapped

    async def seek(self, offset: int) -> int:
        return int(await self.file.seek(offset))

    async def read(self, size: int) -> bytes:
        return await anyio.to_thread.run_sync(self._read, size)

    def _read(self, size: int) -> bytes:
        chunk: bytes = self.raw.read(size)
        if chunk:  # WILLNEED starts the reads and returns; pages already cached cost nothing
            os.posix_fadvise(self.raw.fileno(), self.raw.tell(), READ_AHEAD, os.POSIX_FADV_WILLNEED)
        return chunk


class JSONBytes(Response):
    """JSON already serialised (by `to_json`): sent as it is."""

    media_type = "application/json"


def to_json(model: BaseModel) -> bytes:
    """The model as JSON in one pass (what FastAPI's response_model would send, without
    validating it a second time)."""
    return model.__pydantic_serializer__.to_json(model)
