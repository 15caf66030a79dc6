"""Choosing a reader: content sniffing, explicit formats, builtins, NPZ limits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from worker.kd.datasets.splits import DatasetLimits, Splits, load_dataset, split_indices
from worker.kd.errors import InvalidDataset
from worker.kd.formats import sniff_dataset
from worker.kd.spec import DatasetSpec

WriteNpz = Callable[..., Path]
X = np.arange(40, dtype=np.float32).reshape(10, 4)
Y = np.arange(10) % 3


def load(path: Path | None, limits: DatasetLimits = DatasetLimits(), **spec: object) -> Splits:
    dataset = DatasetSpec.model_validate({"file_id": "file_dataset", **spec})
    return load_dataset(dataset, path, val_fraction=0.2, seed=0, limits=limits)


def test_content_decides_not_the_name(tmp_path: Path, write_npz: WriteNpz) -> None:
    csv_named_npz = tmp_path / "data.npz"
    csv_named_npz.write_text("a,b\n1,2\n3,4\n")
    npz_named_csv = write_npz(x=X, y=Y).rename(tmp_path / "data.csv")
    assert sniff_dataset(csv_named_npz) == "csv" and sniff_dataset(npz_named_csv) == "npz"
    assert load(csv_named_npz).input_shape == (2,)
    assert load(npz_named_csv).input_shape == (4,)


def test_an_explicit_format_is_obeyed(tmp_path: Path) -> None:
    path = tmp_path / "one-column"
    path.write_text("only\n1\n2\n3")  # no delimiter: sniffed as text all the same
    assert load(path, format="csv").input_shape == (1,)
    with pytest.raises(InvalidDataset, match=r"not a readable \.npz archive"):
        load(path, format="npz")


@pytest.mark.parametrize(
    "content", [bytes(range(256)) * 4, b"\x00\x01binary", b""], ids=["bytes", "nul", "empty"]
)
def test_unknown_content_lists_the_formats(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mystery"
    path.write_bytes(content)
    with pytest.raises(
        InvalidDataset, match=r"an NPZ of arrays .*, a CSV file with a header row, or a ZIP of"
    ):
        load(path)


def test_a_file_spec_needs_its_file() -> None:
    with pytest.raises(InvalidDataset, match="no file was given"):
        load(None)


def test_digits_builtin_is_images_with_a_seeded_split() -> None:
    digits = DatasetSpec(builtin="digits")
    data = load_dataset(digits, None, val_fraction=0.2, seed=5)
    assert data.input_shape == (1, 8, 8) and str(data.x_train.dtype) == "torch.float32"
    assert len(data.x_train) + len(data.x_val) + len(data.x_eval) == 1797
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    assert data.class_names == [str(d) for d in range(10)] and data.max_label() == 9
    _, held = split_indices(1797, 0.2, 5)  # evaluation is carved first
    assert data.y_eval is not None and data.y_eval.tolist() == load_digits().target[held].tolist()


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        (DatasetLimits(max_samples=12), r"13 samples; at most 12 .*\(limit max_samples\)"),
        (DatasetLimits(max_features=3), r"4 values per sample; at most 3 .*max_features"),
        (DatasetLimits(max_tensor_bytes=100), r"208 bytes of float32 .*max_tensor_bytes"),
        (DatasetLimits(max_file_bytes=100), r"at most 100 are accepted \(limit max_file_bytes\)"),
    ],
)
def test_npz_limits_are_read_from_headers(
    write_npz: WriteNpz, limits: DatasetLimits, match: str
) -> None:
    with pytest.raises(InvalidDataset, match=match):
        load(write_npz(x=X, y=Y, x_val=X[:3]), limits)
