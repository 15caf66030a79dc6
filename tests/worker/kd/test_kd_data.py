"""Dataset checks: every refusal names the problem and how to fix it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from worker.kd.datasets.splits import Splits, load_dataset, split_indices
from worker.kd.errors import InvalidDataset
from worker.kd.spec import DatasetSpec

WriteNpz = Callable[..., Path]
X = np.arange(40, dtype=np.float64).reshape(10, 4)
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


UPLOAD = DatasetSpec(file_id="file_dataset")


def load(path: Path, seed: int = 0) -> Splits:
    return load_dataset(UPLOAD, path, val_fraction=0.2, seed=seed)


def test_missing_x_names_the_arrays_found(write_npz: WriteNpz) -> None:
    path = write_npz(features=X, labels=Y)
    with pytest.raises(InvalidDataset, match=r"no array named 'x'; found: features, labels\."):
        load(path)


def test_nan_reports_count_and_where(write_npz: WriteNpz) -> None:
    x = X.copy()
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    x[7, 2] = np.nan
    with pytest.raises(
        InvalidDataset, match=r"3 NaN or infinite .* in 2 sample\(s\), at indices 3, 7"
    ):
        load(write_npz(x=x, y=Y))


def test_label_length_must_match(write_npz: WriteNpz) -> None:
    with pytest.raises(InvalidDataset, match="'y' has 9 labels but 'x' has 10 samples"):
        load(write_npz(x=X, y=Y[:9]))


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (Y + 0.5, "integer class indices"),
        (Y - 1, "negative labels"),
        (np.eye(10)[:, :3], "1-D class indices"),
    ],
)
def test_labels_must_be_class_indices(y: np.ndarray, match: str, write_npz: WriteNpz) -> None:
    with pytest.raises(InvalidDataset, match=match):
        load(write_npz(x=X, y=y))


def test_object_arrays_are_refused_not_unpickled(write_npz: WriteNpz) -> None:
    x = np.array([{"a": 1}, {"b": 2}], dtype=object)
    with pytest.raises(InvalidDataset, match="Object arrays are refused"):
        load(write_npz(x=x))


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.array([["a", "b"], ["c", "d"]]), "must be numeric"),
        (np.arange(5.0), "must be shaped"),
        (X[:1], "at least 2 are needed"),
    ],
)
def test_features_must_be_numeric_samples(x: np.ndarray, match: str, write_npz: WriteNpz) -> None:
    with pytest.raises(InvalidDataset, match=match):
        load(write_npz(x=x))


def test_not_an_npz(tmp_path: Path) -> None:
    garbage, single = tmp_path / "garbage.npz", tmp_path / "single.npy"
    garbage.write_bytes(b"not numpy at all" * 10)
    np.save(single, X)
    with pytest.raises(InvalidDataset, match=r"not a readable \.npz archive"):
        load(garbage)
    with pytest.raises(InvalidDataset, match=r"single \.npy array"):
        load(single)


def test_split_is_seeded_and_typed(write_npz: WriteNpz) -> None:
    """Neither x_val nor x_test: evaluation is carved first (seed), then selection from
    what is left (seed + 1); the three parts are disjoint and cover the data."""
    data = load(write_npz(x=X, y=Y), seed=3)
    rest, held = split_indices(10, 0.2, 3)
    train, val = (rest[i] for i in split_indices(len(rest), 0.2, 4))
    assert (data.source, data.selection, data.evaluation) == ("split", "carved", "carved")
    assert (len(data.x_train), len(data.x_val), len(data.x_eval)) == (6, 2, 2)
    assert data.x_eval.numpy().tolist() == X[held].astype(np.float32).tolist()
    assert data.x_val.numpy().tolist() == X[val].astype(np.float32).tolist()
    assert data.y_train is not None and data.y_train.tolist() == Y[train].tolist()
    assert sorted([*train, *val, *held]) == list(range(10))
    assert (str(data.x_train.dtype), str(data.y_train.dtype)) == ("torch.float32", "torch.int64")


def test_unlabeled_dataset_is_accepted(write_npz: WriteNpz) -> None:
    data = load(write_npz(x=X))
    assert data.y_train is None and data.y_val is None
    assert data.max_label() is None


def test_explicit_validation_arrays(write_npz: WriteNpz) -> None:
    """x_val without x_test is the evaluation split; selection is carved from x."""
    data = load(write_npz(x=X, y=Y, x_val=X[:3], y_val=Y[:3]))
    assert (data.source, data.selection) == ("x_val", "carved")
    assert (len(data.x_train), len(data.x_val), len(data.x_eval)) == (8, 2, 3)
    assert data.x_eval.numpy().tolist() == X[:3].astype(np.float32).tolist()
    with pytest.raises(InvalidDataset, match=r"'x_val' samples have shape \(2,\)"):
        load(write_npz(x=X, x_val=X[:3, :2]))
    with pytest.raises(InvalidDataset, match="'y_val' but no 'x_val'"):
        load(write_npz(x=X, y_val=Y))


def test_test_arrays_evaluate_and_val_arrays_select(write_npz: WriteNpz) -> None:
    """x_test is the evaluation split; x_val, when given, the selection split, else carved."""
    data = load(write_npz(x=X, y=Y, x_val=X[:3], y_val=Y[:3], x_test=X[3:7], y_test=Y[3:7]))
    assert (data.source, data.selection, data.evaluation) == ("x_test", "x_val", "x_test")
    assert (len(data.x_train), len(data.x_val), len(data.x_eval)) == (10, 3, 4)
    assert data.y_eval is not None and data.y_eval.tolist() == Y[3:7].tolist()
    carved = load(write_npz(x=X, y=Y, x_test=X[3:7], y_test=Y[3:7]))
    assert (carved.selection, len(carved.x_train), len(carved.x_val)) == ("carved", 8, 2)
    with pytest.raises(InvalidDataset, match=r"'x_test' samples have shape \(2,\)"):
        load(write_npz(x=X, x_test=X[:3, :2]))
    with pytest.raises(InvalidDataset, match="'y_test' but no 'x_test'"):
        load(write_npz(x=X, y_test=Y))
