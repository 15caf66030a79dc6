"""Serving a stored object: a redirect to a presigned URL, or the bytes through the API.

With `DISTILLERY_DOWNLOADS=redirect` (the default on an object store) the client is sent
`307` to a short-lived presigned URL and fetches the bytes from the store itself, so large
artifacts never pass through an API process. Otherwise the bytes are streamed: a directory
store by `LargeFileResponse`, an object store by a ranged read of the object, and both
answer `Range` requests with `206`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, StreamingResponse

from app.api.responses import LargeFileResponse
from app.config import Settings
from app.errors import ApiError
from app.storage import Kind, RangeNotSatisfiable, Storage

DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
    206: {"description": "The byte range a `Range` header asked for."},
    307: {
        "description": "With DISTILLERY_DOWNLOADS=redirect: fetch the bytes from the presigned "
        "URL in `Location` (send no API key there)."
    },
}


class RangeNotSatisfiableError(ApiError):
    status_code = 416
    code = "range_not_satisfiable"


async def stored_object(
    request: Request,
    storage: Storage,
    settings: Settings,
    kind: Kind,
    relative: str,
    filename: str,
    sha256: str,
) -> Response:
    """The response that delivers one stored object, as the settings ask."""
    headers = {"X-Content-SHA256": sha256}
    if settings.download_mode == "redirect":
        url = await run_in_threadpool(
            storage.presigned_url, kind, relative, filename, settings.presign_seconds
        )
        return RedirectResponse(url, status_code=307, headers=headers)
    path = storage.local_path(kind, relative)
    if path is not None:
        return LargeFileResponse(
            path, filename=filename, media_type="application/octet-stream", headers=headers
        )
    byte_range = request.headers.get("range")
    try:
        stream = await run_in_threadpool(storage.open_stream, kind, relative, byte_range)
    except RangeNotSatisfiable as exc:
        raise RangeNotSatisfiableError(
            f"The range {byte_range!r} is outside the file; ask for bytes it has."
        ) from exc
    headers.update(
        {
            "Content-Length": str(stream.length),
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
        }
    )
    if stream.content_range:
        headers["Content-Range"] = stream.content_range
    return StreamingResponse(
        stream.chunks,
        status_code=206 if stream.content_range else 200,
        media_type="application/octet-stream",
        headers=headers,
    )
