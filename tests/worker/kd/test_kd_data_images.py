"""Image-folder ZIPs: one folder per class, PNG/JPEG decoded to (N, C, H, W) in [0, 1]."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker.kd.datasets.layout import image_layout
from worker.kd.datasets.splits import DatasetLimits, Splits, load_dataset
from worker.kd.errors import InvalidDataset
from worker.kd.spec import DatasetSpec

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def image_bytes(
    color: tuple[int, int, int] = RED, size: tuple[int, int] = (12, 10), fmt: str = "PNG"
) -> bytes:
    """A solid-color image; size is (W, H) as Pillow has it."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def write_zip(
    path: Path,
    entries: dict[str, bytes],
    symlink: str | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def load(path: Path, limits: DatasetLimits = DatasetLimits(), **spec: object) -> Splits:
    dataset = DatasetSpec.model_validate({"file_id": "file_dataset", **spec})
    return load_dataset(dataset, path, val_fraction=0.25, seed=0, limits=limits)


def all_samples(data: Splits) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.concatenate([data.x_train.numpy(), data.x_val.numpy(), data.x_eval.numpy()])
    if data.y_train is None or data.y_val is None or data.y_eval is None:
        return x, None
    return x, np.concatenate([data.y_train.numpy(), data.y_val.numpy(), data.y_eval.numpy()])


def colored_classes(tmp_path: Path, prefix: str = "") -> Path:
    """dogs (blue JPEGs), cats (red PNGs), zebra (green PNGs): 2 images each."""
    entries = {}
    for folder, color, fmt in (
        ("dogs", BLUE, "JPEG"),
        ("cats", RED, "PNG"),
        ("zebra", GREEN, "PNG"),
    ):
        suffix = ".JPG" if fmt == "JPEG" else ".png"
        for i in range(2):
            entries[f"{prefix}{folder}/{i}{suffix}"] = image_bytes(color, fmt=fmt)
    return write_zip(tmp_path / "images.bin", entries)


def test_folders_are_classes_in_sorted_order(tmp_path: Path) -> None:
    data = load(colored_classes(tmp_path), image_size=(6, 8))
    assert data.class_names == ["cats", "dogs", "zebra"]
    assert data.input_shape == (3, 6, 8) and str(data.x_train.dtype) == "torch.float32"
    x, y = all_samples(data)
    assert y is not None and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    means = {int(label): x[y == label].mean(axis=(0, 2, 3)) for label in range(3)}
    assert np.allclose(means[0], [1, 0, 0]) and np.allclose(means[2], [0, 1, 0])
    assert np.allclose(means[1], [0, 0, 1], atol=0.02)  # JPEG is lossy
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_grayscale_has_one_channel(tmp_path: Path) -> None:
    data = load(colored_classes(tmp_path), image_size=(4, 4), grayscale=True)
    x, y = all_samples(data)
    assert data.input_shape == (1, 4, 4) and y is not None
    assert np.allclose(x[y == 0], 76 / 255)  # ITU-R 601 luma of pure red


@pytest.mark.parametrize("prefix", ["data/", "data/train/"])
def test_wrapping_folders_are_skipped(tmp_path: Path, prefix: str) -> None:
    assert load(colored_classes(tmp_path, prefix)).class_names == ["cats", "dogs", "zebra"]


def test_images_alone_are_unlabeled(tmp_path: Path) -> None:
    entries = {f"{i}.png": image_bytes() for i in range(4)}
    data = load(write_zip(tmp_path / "loose.zip", entries))
    assert data.y_train is None and data.y_val is None and data.class_names is None
    single_folder = write_zip(
        tmp_path / "one.zip", {f"all/{i}.jpeg": image_bytes() for i in range(3)}
    )
    assert load(single_folder).y_train is None


def test_layout_ignores_other_files_and_reads_nested_folders() -> None:
    layout = image_layout(
        [
            "cats/",
            "cats/indoor/1.png",
            "cats/2.PNG",
            "dogs/3.jpg",
            "dogs/notes.txt",
            "README.md",
            ".DS_Store",
            "__MACOSX/dogs/._3.jpg",
            "dogs/.hidden.png",
        ]
    )
    assert layout.classes == ["cats", "dogs"]
    assert layout.members == ["cats/2.PNG", "cats/indoor/1.png", "dogs/3.jpg"]
    assert layout.counts() == {"cats": 2, "dogs": 1}
    assert sorted(layout.ignored) == sorted(
        ["dogs/notes.txt", "README.md", ".DS_Store", "__MACOSX/dogs/._3.jpg", "dogs/.hidden.png"]
    )


def test_images_beside_class_folders_are_refused(tmp_path: Path) -> None:
    entries = {"cats/1.png": image_bytes(), "dogs/2.png": image_bytes(), "3.png": image_bytes()}
    with pytest.raises(InvalidDataset, match=r"images beside the class folders \('3.png'\)"):
        load(write_zip(tmp_path / "mixed.zip", entries))


def test_a_zip_without_images_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "docs.zip", {"a.txt": b"x", "b/c.csv": b"y"})
    with pytest.raises(InvalidDataset, match=r"no PNG or JPEG images \(found 'a.txt', 'b/c.csv'\)"):
        load(path)


@pytest.mark.parametrize(
    "content",
    [b"not an image at all", image_bytes(fmt="GIF"), image_bytes()[:40]],
    ids=["text", "gif", "truncated"],
)
def test_undecodable_images_are_named(tmp_path: Path, content: bytes) -> None:
    entries = {"cats/ok.png": image_bytes(), "dogs/bad.png": content}
    with pytest.raises(InvalidDataset, match=r"'dogs/bad.png' cannot be decoded as PNG or JPEG"):
        load(write_zip(tmp_path / "bad.zip", entries))


def test_unsafe_archives_are_refused(tmp_path: Path) -> None:
    escape = write_zip(tmp_path / "escape.zip", {"cats/1.png": image_bytes(), "../2.png": b"x"})
    with pytest.raises(InvalidDataset, match="points outside the archive"):
        load(escape)
    link = write_zip(tmp_path / "link.zip", {"cats/1.png": image_bytes()}, symlink="dogs/2.png")
    with pytest.raises(InvalidDataset, match="symbolic link"):
        load(link)


@pytest.mark.parametrize(
    ("limits", "spec", "match"),
    [
        (DatasetLimits(max_images=5), {}, r"6 images; at most 5 .*\(limit max_images\)"),
        (DatasetLimits(max_samples=5), {}, r"6 samples; at most 5 .*max_samples"),
        (
            DatasetLimits(max_image_pixels=100),
            {},
            r"is 12x10; at most 100 pixels per image .*\(limit max_image_pixels\)",
        ),
        (DatasetLimits(max_features=100), {"image_size": [8, 8]}, r"192 values per sample"),
        (
            DatasetLimits(max_tensor_bytes=1000),
            {"image_size": [8, 8]},
            r"4,608 bytes of float32 \(6 samples of 192 values\).*max_tensor_bytes",
        ),
        (DatasetLimits(max_file_bytes=100), {}, r"limit max_file_bytes"),
    ],
)
def test_limits_are_checked_before_decoding(
    tmp_path: Path, limits: DatasetLimits, spec: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidDataset, match=match):
        load(colored_classes(tmp_path), limits, **spec)


def test_pillows_decompression_bomb_guard_is_an_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("1", (10_000, 9_000)).save(buffer, "PNG")  # 90 M pixels, past Pillow's guard
    entries = {"cats/bomb.png": buffer.getvalue(), "dogs/ok.png": image_bytes()}
    path = write_zip(tmp_path / "bomb.zip", entries, compression=zipfile.ZIP_STORED)
    limits = DatasetLimits(max_image_pixels=200_000_000)
    with pytest.raises(InvalidDataset, match=r"'cats/bomb.png' is too large.*max_image_pixels"):
        load(path, limits)


def test_encrypted_entries_are_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "locked.zip", {"cats/1.png": image_bytes(), "dogs/2.png": b"x"})
    raw = bytearray(path.read_bytes())
    raw[raw.find(b"PK\x03\x04") + 6] |= 1  # the "encrypted" flag, local and central headers
    raw[raw.find(b"PK\x01\x02") + 8] |= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidDataset, match=r"'cats/1.png' cannot be read \(.*encrypted"):
        load(path)
