"""NPZ datasets are judged by their .npy headers before any array is loaded (issue 15,
items 1 and 11): a small compressed file declaring a huge `void` label array is refused
without the memory it declares, and a truncated member is reported as truncated."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.memory import peak_growth
from worker.kd.datasets.base import DatasetLimits
from worker.kd.datasets.npz import read_npz
from worker.kd.errors import InvalidDataset

BOMB_LABELS = 100
BOMB_ITEM_BYTES = 2_000_000  # 100 labels of 2 MB each: 200 MB declared
RSS_BOUND_MB = 60


def npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def write_void_bomb(path: Path) -> None:
    """x is small; y declares BOMB_LABELS records of BOMB_ITEM_BYTES zero bytes each,
    streamed through DEFLATE so neither this test nor the file holds them."""
    x = io.BytesIO()
    np.save(x, np.zeros((BOMB_LABELS, 4), np.float32))
    zeros = bytes(1024 * 1024)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", x.getvalue())
        with archive.open("y.npy", "w", force_zip64=True) as handle:
            handle.write(npy_header((BOMB_LABELS,), f"|V{BOMB_ITEM_BYTES}"))
            left = BOMB_LABELS * BOMB_ITEM_BYTES
            while left:
                handle.write(zeros[: min(left, len(zeros))])
                left -= min(left, len(zeros))


def test_void_label_bomb_is_refused_without_its_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    write_void_bomb(path)
    assert path.stat().st_size < 2 * 1024 * 1024  # a small upload...
    grew_mb, result = peak_growth(
        "from pathlib import Path\n"
        "from worker.kd.datasets.base import DatasetLimits\n"
        "from worker.kd.datasets.npz import read_npz\n",
        f"read_npz(Path({str(path)!r}), DatasetLimits())",
    )
    assert result.startswith("InvalidDataset"), result
    assert "'y'" in result and "dtype" in result, result
    assert grew_mb < RSS_BOUND_MB, f"reading the refused file grew RSS by {grew_mb:.0f} MB"


def test_oversize_numeric_array_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", npy_header((10, 4), "<f4") + bytes(160))
        archive.writestr("y.npy", npy_header((10_000_000,), "<f8"))  # 80 MB declared
    with pytest.raises(InvalidDataset, match="limit max_tensor_bytes"):
        read_npz(path, DatasetLimits(max_tensor_bytes=10_000_000))


def test_truncated_member_is_reported_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cut.npz"
    x = io.BytesIO()
    np.save(x, np.zeros((10, 4), np.float32))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", x.getvalue()[:-50])
    with pytest.raises(InvalidDataset, match="truncated") as caught:
        read_npz(path, DatasetLimits())
    assert "unpickling" not in caught.value.message


def test_truncated_archive_is_reported_as_truncated(tmp_path: Path) -> None:
    whole = io.BytesIO()
    np.savez(whole, x=np.zeros((10, 4), np.float32))
    path = tmp_path / "cut.npz"
    path.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    with pytest.raises(InvalidDataset, match="truncated"):
        read_npz(path, DatasetLimits())
