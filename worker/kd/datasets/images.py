"""Image-folder ZIP datasets: PNG/JPEG files decoded with Pillow into (N, C, H, W) floats.

Members are read straight from the archive after `check_archive` has vetted every entry,
so nothing is written to disk; `layout` says which files are images and their classes.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from worker.kd.datasets.archives import check_archive
from worker.kd.datasets.base import (
    Arrays,
    DatasetLimits,
    check_size,
    image_archive_limits,
    over_limit,
)
from worker.kd.datasets.layout import image_layout
from worker.kd.errors import InvalidDataset, shorten


def read_image_zip(
    path: Path, image_size: tuple[int, int], grayscale: bool, limits: DatasetLimits
) -> Arrays:
    """Images resized to `image_size` (H, W), RGB or grayscale, scaled to [0, 1]."""
    infos = {info.filename: info for info in check_archive(path, image_archive_limits(limits))}
    layout = image_layout(infos)
    count = len(layout.members)
    if count > limits.max_images:
        raise over_limit("images", count, limits.max_images, "max_images")
    mode, channels = ("L", 1) if grayscale else ("RGB", 3)
    height, width = image_size
    check_size(count, channels * height * width, limits)
    pixels = np.empty((count, channels, height, width), dtype=np.uint8)  # (N, C, H, W)
    with zipfile.ZipFile(path) as archive, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for i, name in enumerate(layout.members):
            data = read_member(archive, infos[name])
            pixels[i] = decode_image(data, name, mode, (width, height), limits.max_image_pixels)
    x = np.divide(pixels, 255, dtype=np.float32)  # (N, C, H, W) in [0, 1]
    y = None if layout.labels is None else np.asarray(layout.labels, dtype=np.int64)
    return Arrays(x, y, class_names=layout.classes)


def read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bytes:
    """A member's bytes; encrypted, corrupt or oddly compressed members are refused."""
    try:
        return archive.read(member)
    except (RuntimeError, NotImplementedError, zipfile.BadZipFile, OSError) as exc:
        raise InvalidDataset(
            f"The archive entry {member.filename!r} cannot be read ({shorten(exc)})."
        ) from exc


def decode_image(
    data: bytes, name: str, mode: str, size: tuple[int, int], max_pixels: int
) -> np.ndarray:
    """One PNG/JPEG as uint8 (C, H, W), converted to `mode` and resized to `size` (W, H)."""
    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
            if image.width * image.height > max_pixels:
                raise _too_many_pixels(name, f"{image.width}x{image.height}", max_pixels)
            image.draft(mode, size)  # JPEG: decode at a reduced scale when it is larger
            resized = image.convert(mode).resize(size, Image.Resampling.BILINEAR)
    except InvalidDataset:
        raise
    except Image.DecompressionBombWarning as exc:
        raise _too_many_pixels(name, "too large", max_pixels) from exc
    except Exception as exc:  # Pillow raises many kinds on corrupt input
        raise InvalidDataset(
            f"The image {name!r} cannot be decoded as PNG or JPEG ({shorten(exc)})."
        ) from exc
    array = np.asarray(resized)  # (H, W) or (H, W, C)
    return array.reshape(size[1], size[0], -1).transpose(2, 0, 1)  # (C, H, W)


def _too_many_pixels(name: str, dimensions: str, max_pixels: int) -> InvalidDataset:
    return InvalidDataset(
        f"The image {name!r} is {dimensions}; at most {max_pixels:,} pixels per image are "
        "accepted (limit max_image_pixels)."
    )
