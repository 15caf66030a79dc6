"""Uploaded ZIP archives (image-folder datasets, model directories), checked before and
while they are extracted: nothing lands outside the destination, nothing is a link, and
neither the member count nor the bytes written can exceed their bounds, whatever the
archive's headers claim."""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from worker.kd.errors import InvalidDataset

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 100_000
    max_total_bytes: int = 8 * 1024**3
    max_ratio: float = 200.0  # uncompressed / compressed, per member: a zip bomb is far above


def check_archive(path: Path, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    """The archive's file members, if every member is safe; raises InvalidDataset naming
    the first member that is not."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise InvalidDataset(f"The file is not a readable ZIP archive ({exc}).") from exc
    if len(members) > limits.max_members:
        raise InvalidDataset(
            f"The archive has {len(members)} entries; at most {limits.max_members} are accepted."
        )
    total = 0
    for member in members:
        _check_member(member, limits)
        total += member.file_size
    if total > limits.max_total_bytes:
        raise InvalidDataset(
            f"The archive unpacks to {total} bytes; at most {limits.max_total_bytes} are accepted."
        )
    return [m for m in members if not m.is_dir()]


def _check_member(member: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    name = member.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
        raise InvalidDataset(f"The archive entry {name!r} points outside the archive.")
    mode = member.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InvalidDataset(f"The archive entry {name!r} is a symbolic link; links are refused.")
    if member.compress_size and member.file_size / member.compress_size > limits.max_ratio:
        raise InvalidDataset(
            f"The archive entry {name!r} expands {member.file_size // member.compress_size}x; "
            "this looks like a ZIP bomb."
        )


def safe_extract(path: Path, dest: Path, limits: ArchiveLimits) -> list[Path]:
    """Extract the checked members under `dest`, counting real bytes as they are written."""
    members = check_archive(path, limits)
    root = dest.resolve()
    written = 0
    out: list[Path] = []
    with zipfile.ZipFile(path) as archive:
        for member in members:
            target = (root / member.filename).resolve()
            if not target.is_relative_to(root):
                raise InvalidDataset(f"The archive entry {member.filename!r} escapes.")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, target.open("wb") as sink:
                while block := source.read(CHUNK):
                    written += len(block)
                    if written > limits.max_total_bytes:
                        shutil.rmtree(root, ignore_errors=True)
                        raise InvalidDataset(
                            f"The archive unpacks to more than {limits.max_total_bytes} bytes."
                        )
                    sink.write(block)
            out.append(target)
    return out
