"""What a dataset file is, judged by its bytes, never by its name. Pure Python."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
NPY_MAGIC = b"\x93NUMPY"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HEAD_BYTES = 512
ACCEPTED = (
    "an NPZ of arrays (np.savez), a CSV file with a header row, or a ZIP of image folders "
    "(one folder per class, PNG/JPEG)"
)
# Text may hold tabs and line ends; other control characters mean binary.
_CONTROL = frozenset(chr(c) for c in range(32)) - {"\t", "\n", "\r", "\f"}

Kind = Literal["npz", "image_zip", "zip", "npy", "csv", "unknown"]


def sniff_dataset(path: Path, head: bytes | None = None) -> Kind:
    """`npz` (a ZIP of .npy), `image_zip` (a ZIP holding PNG/JPEG files), `zip` (any other),
    `npy` (one bare array), `csv` (delimited text) or `unknown`."""
    if head is None:
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    if head.startswith(ZIP_MAGICS):
        return sniff_zip(path)
    if head.startswith(NPY_MAGIC):
        return "npy"
    if looks_like_csv(head):
        return "csv"
    return "unknown"


def sniff_zip(path: Path) -> Literal["npz", "image_zip", "zip", "unknown"]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    if any(is_image_name(name) for name in names):
        return "image_zip"
    return "zip"


def is_image_name(name: str) -> bool:
    """A PNG/JPEG member by its name inside the archive (metadata folders excluded)."""
    parts = name.replace("\\", "/").split("/")
    if parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts if part):
        return False
    return parts[-1].lower().endswith(IMAGE_SUFFIXES)


def looks_like_csv(head: bytes) -> bool:
    """UTF-8 text without binary control characters, with a delimiter or a line end."""
    text = decode_head(head)
    if text is None or not text.strip() or any(ch in _CONTROL for ch in text):
        return False
    return any(mark in text for mark in (",", ";", "\t", "\n"))


def decode_head(head: bytes) -> str | None:
    """The first bytes of a file as UTF-8 text (a character cut at the end is dropped), or
    None when they are not UTF-8."""
    try:
        return head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3 or exc.reason != "unexpected end of data":
            return None
        return head[: exc.start].decode("utf-8-sig")
