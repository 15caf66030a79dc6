from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from worker.kd.datasets.archives import ArchiveLimits, check_archive, safe_extract
from worker.kd.errors import InvalidDataset


def make_zip(path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def test_a_plain_archive_extracts_inside_dest(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "ok.zip", {"cats/1.png": b"a", "dogs/2.png": b"bb"})
    files = safe_extract(archive, tmp_path / "out", ArchiveLimits())
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == [
        "cats/1.png",
        "dogs/2.png",
    ]


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/evil", "C:/evil"])
def test_escaping_names_are_refused(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "bad.zip", {name: b"x"})
    with pytest.raises(InvalidDataset, match="outside the archive"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits())
    assert not (tmp_path / "evil.txt").exists()


def test_symlinks_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "link.zip", {"a.png": b"x"}, symlink="cats/link")
    with pytest.raises(InvalidDataset, match="symbolic link"):
        check_archive(archive, ArchiveLimits())


def test_member_count_and_size_are_bounded(tmp_path: Path) -> None:
    many = make_zip(tmp_path / "many.zip", {f"{i}.png": b"x" for i in range(11)})
    with pytest.raises(InvalidDataset, match="11 entries"):
        check_archive(many, ArchiveLimits(max_members=10))
    big = make_zip(tmp_path / "big.zip", {"a.bin": bytes(range(256)) * 64})
    with pytest.raises(InvalidDataset, match="unpacks to 16384 bytes"):
        check_archive(big, ArchiveLimits(max_total_bytes=1000))


def test_zip_bombs_are_refused(tmp_path: Path) -> None:
    bomb = make_zip(tmp_path / "bomb.zip", {"zeros.bin": b"\0" * 5_000_000})
    with pytest.raises(InvalidDataset, match="ZIP bomb"):
        check_archive(bomb, ArchiveLimits())


def test_lying_headers_are_caught_while_writing(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "liar.zip", {"a.bin": bytes(range(256)) * 64})
    data = bytearray(archive.read_bytes())
    # Make both headers claim 10 bytes while 16 KiB of data follow.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        data[at + offset : at + offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises((InvalidDataset, zipfile.BadZipFile)):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=1000))
    assert (
        not (tmp_path / "out" / "a.bin").exists()
        or (tmp_path / "out" / "a.bin").stat().st_size <= 1000
    )
