"""CSV datasets: a header, numeric features, integer or named labels, or none at all."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from worker.kd.datasets.splits import DatasetLimits, Splits, load_dataset, split_indices
from worker.kd.datasets.table import read_csv
from worker.kd.errors import InvalidDataset
from worker.kd.spec import DatasetSpec

ROWS = [(0.5, -1.0, "cat"), (1.5, 2.0, "dog"), (2.5, 3.0, "cat"), (3.5, 4.0, "bird")] * 3


def write_csv(tmp_path: Path, text: str, name: str = "data.bin") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def table(header: str, rows: Sequence[tuple[object, ...]], sep: str = ",") -> str:
    return "\n".join([header, *(sep.join(str(v) for v in row) for row in rows)]) + "\n"


def load(path: Path, limits: DatasetLimits = DatasetLimits(), **spec: object) -> Splits:
    dataset = DatasetSpec.model_validate({"file_id": "file_dataset", **spec})
    return load_dataset(dataset, path, val_fraction=0.25, seed=0, limits=limits)


def test_integer_labels_are_class_indices(tmp_path: Path) -> None:
    rows = [(i, i * 2, i % 3) for i in range(12)]
    data = load(write_csv(tmp_path, table("a,b,label", rows)))
    _, held = split_indices(12, 0.25, 0)  # the evaluation split is carved first
    assert data.x_eval.tolist() == [[float(i), float(i * 2)] for i in held]
    assert data.y_eval is not None and data.y_eval.tolist() == [i % 3 for i in held]
    assert data.y_train is not None
    assert (str(data.x_train.dtype), str(data.y_train.dtype)) == ("torch.float32", "torch.int64")
    assert data.class_names is None and data.source == "split"


def test_class_names_are_numbered_in_sorted_order(tmp_path: Path) -> None:
    data = load(write_csv(tmp_path, table("f1,f2,label", ROWS)))
    assert data.class_names == ["bird", "cat", "dog"]
    x = np.concatenate([data.x_train.numpy(), data.x_val.numpy()])
    assert data.y_train is not None and data.y_val is not None
    y = np.concatenate([data.y_train.numpy(), data.y_val.numpy()])
    names = {row[0]: row[2] for row in ROWS}
    assert all(
        data.class_names[label] == names[float(f1)] for f1, label in zip(x[:, 0], y, strict=True)
    )


def test_no_label_column_means_unlabeled(tmp_path: Path) -> None:
    data = load(write_csv(tmp_path, table("f1,f2", [(1, 2), (3, 4), (5, 6)])))
    assert data.y_train is None and data.y_val is None and data.class_names is None
    assert data.input_shape == (2,)


def test_a_named_label_column_can_sit_anywhere(tmp_path: Path) -> None:
    path = write_csv(tmp_path, table("species,f1,f2", [(r[2], r[0], r[1]) for r in ROWS]))
    data = load(path, label_column="species")
    assert data.class_names == ["bird", "cat", "dog"] and data.input_shape == (2,)


def test_a_renamed_label_column_must_exist(tmp_path: Path) -> None:
    path = write_csv(tmp_path, table("f1,f2,label", ROWS))
    with pytest.raises(InvalidDataset, match=r"label_column is 'species' but the CSV has no such"):
        load(path, label_column="species")


@pytest.mark.parametrize("sep", [";", "\t"])
def test_semicolons_and_tabs_delimit_too(tmp_path: Path, sep: str) -> None:
    path = write_csv(tmp_path, table(sep.join(["f1", "f2", "label"]), ROWS, sep), "d.csv")
    assert load(path, format="csv").class_names == ["bird", "cat", "dog"]


def test_quotes_spaces_bom_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    text = '\ufeff"f 1", f2 ,label\n" 1.5",2e1,1\n\n3,-4,0\n5,6,1\n'
    data = load(write_csv(tmp_path, text))
    x = sorted(data.x_train.tolist() + data.x_val.tolist() + data.x_eval.tolist())
    assert x == [[1.5, 20.0], [3.0, -4.0], [5.0, 6.0]]


def test_chunks_agree_with_one_read(tmp_path: Path) -> None:
    path = write_csv(tmp_path, table("f1,f2,label", ROWS))
    whole = read_csv(path, "label", DatasetLimits())
    chunked = read_csv(path, "label", DatasetLimits(), chunk_rows=5)
    assert chunked.x.tolist() == whole.x.tolist()
    assert chunked.y is not None and whole.y is not None
    assert chunked.y.tolist() == whole.y.tolist() and chunked.class_names == whole.class_names


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1,2\n3,4\n5,6\n", r"first line \(1, 2\) is numbers, not a header"),
        ("\n\n", "first line is empty"),
        (",f,label\n0,1,2\n1,2,3\n", r"Column 1 of the CSV header has no name.*index=False"),
        ("f,f,label\n0,1,2\n1,2,3\n", r"repeats the column name\(s\) 'f'"),
        ("label\n0\n1\n", "only the label column 'label'"),
        ("f1,label\n1,0\n", r"1 data row\(s\); at least 2"),
        ("f1,f2,label\n1,2,0\n3,4\n", "Line 3 of the CSV has 2 values but the header has 3"),
        ("f1,f2,label\n1,2,0\n3,,1\n", r"Line 3 of the CSV: column 'f2' is empty\. Fill in"),
        ("f1,f2,label\n1,nan,0\n3,4,1\n", r"column 'f2' has 'nan', which is not a finite"),
        ("f1,f2,label\n1,1e39,0\n3,4,1\n", r"column 'f2' has '1e39', which is not a finite"),
        (
            "f1,kind,label\n1,a,0\n3,b,1\n",
            r"Line 2 of the CSV: column 'kind' has 'a', which is not a number\. Every column but "
            r"the label column \('label'\) must be numeric; if 'kind' holds the class labels, set "
            r"dataset.label_column to 'kind'\.",
        ),
        ("f1,label\n1,0\n2,cat\n", r"mixes numbers \('0' on line 2\) and class names \('cat'"),
        ("f1,label\n1,0\n2,1.5\n", r"'1.5' on line 3; labels must be class indices"),
        ("f1,label\n1,0\n2,-1\n", r"'-1' on line 3; labels must be class indices"),
        ("f1,label\n1,0\n2, \n", r"Line 3 has no label in column 'label'"),
    ],
)
def test_bad_csvs_say_what_and_where(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(InvalidDataset, match=match):
        load(write_csv(tmp_path, text), format="csv")


def test_text_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("f1,label\n1,café\n2,thé\n".encode("latin-1"))
    with pytest.raises(InvalidDataset, match="not UTF-8 text"):
        load(path, format="csv")


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        (DatasetLimits(max_samples=10), r"12 samples; at most 10 .*\(limit max_samples\)"),
        (DatasetLimits(max_features=1), r"2 values per sample; at most 1 .*max_features"),
        (DatasetLimits(max_tensor_bytes=64), r"96 bytes of float32 .*max_tensor_bytes"),
        (DatasetLimits(max_file_bytes=20), r"at most 20 are accepted \(limit max_file_bytes\)"),
    ],
)
def test_limits_are_named(tmp_path: Path, limits: DatasetLimits, match: str) -> None:
    with pytest.raises(InvalidDataset, match=match):
        load(write_csv(tmp_path, table("f1,f2,label", ROWS)), limits)
