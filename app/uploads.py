"""Streaming multipart upload: the file part goes to disk chunk by chunk, hashed on the way.

Starlette's form parser spools a whole upload before a handler sees it, so a size cap there
comes too late. Here the body is parsed as it arrives and the upload stops at the cap.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastapi import Request
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from app.errors import ApiError, PayloadTooLarge

MAX_FIELD_BYTES = 64 * 1024
HEAD_BYTES = 512
# Headers and boundaries of a form with one file and a few fields stay well below this.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


@dataclass
class ReceivedFile:
    filename: str
    path: Path
    size: int
    sha256: str
    head: bytes


@dataclass
class _PartState:
    headers: dict[str, str] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    name: str | None = None
    buffer: bytearray = field(default_factory=bytearray)
    is_file: bool = False


class _Collector:
    """Callbacks for python-multipart's parser; keeps small fields and one file part."""

    def __init__(self, tmp_dir: Path, max_bytes: int, file_field: str) -> None:
        self.tmp_dir = tmp_dir
        self.max_bytes = max_bytes
        self.file_field = file_field
        self.fields: dict[str, str] = {}
        self.file: ReceivedFile | None = None
        self._part = _PartState()
        self._handle: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._head = bytearray()

    def on_part_begin(self) -> None:
        self._part = _PartState()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._part.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._part.header_value += data[start:end]

    def on_header_end(self) -> None:
        key = self._part.header_field.decode("latin-1").lower()
        # Latin-1 keeps the raw bytes; a UTF-8 filename is decoded from them below.
        self._part.headers[key] = self._part.header_value.decode("latin-1")
        self._part.header_field.clear()
        self._part.header_value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._part.headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        self._part.name = name
        if filename is not None and name == self.file_field:
            if self._handle is not None:
                raise ApiError(f"Send exactly one '{self.file_field}' part.", code="invalid_upload")
            self._part.is_file = True
            fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-")
            self._handle = os.fdopen(fd, "wb")
            clean = Path(filename.decode("utf-8", "replace").replace("\\", "/")).name
            self.file = ReceivedFile(clean[:255] or "upload", Path(tmp), 0, "", b"")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._part.is_file:
            self._part.buffer += chunk
            if len(self._part.buffer) > MAX_FIELD_BYTES:
                raise ApiError("A form field is too long.", code="invalid_upload")
            return
        self._size += len(chunk)
        if self._size > self.max_bytes:
            raise PayloadTooLarge(
                f"The file is larger than this server accepts ({self.max_bytes} bytes); "
                "ask your administrator to raise DISTILLERY_MAX_UPLOAD_BYTES."
            )
        self._hash.update(chunk)
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
        assert self._handle is not None
        self._handle.write(chunk)

    def on_part_end(self) -> None:
        if self._part.is_file:
            self.close()
        elif self._part.name:
            self.fields[self._part.name] = self._part.buffer.decode("utf-8", "replace")

    def close(self) -> None:
        if self._handle is not None and not self._handle.closed:
            self._handle.close()
        if self.file is not None:
            self.file.size = self._size
            self.file.sha256 = self._hash.hexdigest()
            self.file.head = bytes(self._head)

    def discard(self) -> None:
        self.close()
        if self.file is not None:
            self.file.path.unlink(missing_ok=True)


async def receive_upload(
    request: Request, tmp_dir: Path, max_bytes: int, file_field: str = "file"
) -> tuple[ReceivedFile, dict[str, str]]:
    """Parse a multipart body as it streams in; return the file on disk and the other fields."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(
            "Send the file as multipart/form-data with a 'file' part and a 'purpose' field.",
            code="invalid_upload",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise PayloadTooLarge(
            f"The upload is {declared} bytes; this server accepts files up to {max_bytes} bytes."
        )
    tmp_dir.mkdir(parents=True, exist_ok=True)
    collector = _Collector(tmp_dir, max_bytes, file_field)
    parser = MultipartParser(boundary, callbacks=_callbacks(collector))  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if parser.state != MultipartState.END:
            raise ApiError(
                "The multipart body ended before its closing boundary: the upload was cut off. "
                "Send it again.",
                code="invalid_upload",
            )
    except BaseException:
        collector.discard()
        raise
    collector.close()
    if collector.file is None:
        raise ApiError(
            f"The form has no '{file_field}' part with a filename.", code="invalid_upload"
        )
    return collector.file, collector.fields


def _callbacks(collector: _Collector) -> dict[str, object]:
    names = (
        "on_part_begin",
        "on_part_data",
        "on_part_end",
        "on_header_field",
        "on_header_value",
        "on_header_end",
        "on_headers_finished",
    )
    return {name: getattr(collector, name) for name in names}
