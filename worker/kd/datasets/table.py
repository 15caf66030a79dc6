"""CSV datasets: a header row, numeric feature columns and an optional label column.

Labels are integer class indices, or class names numbered in sorted order. Without the
label column the rows are unlabeled. The delimiter is the first of `,` tab `;` that the
header holds. No torch here: the API samples uploads with `sample_csv`.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.kd.datasets.base import Arrays, DatasetLimits, check_size
from worker.kd.errors import InvalidDataset, shorten

DELIMITERS = (",", "\t", ";")
DEFAULT_LABEL_COLUMN = "label"
CHUNK_ROWS = 4096
FLOAT32_MAX = float(np.finfo(np.float32).max)
CSV_HINT = (
    "A CSV dataset has a header row, numeric feature columns and, optionally, a label "
    "column (dataset.label_column, default 'label')."
)


def pick_delimiter(header_line: str) -> str:
    return next((mark for mark in DELIMITERS if mark in header_line), ",")


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def cell_problem(text: str) -> str | None:
    """Why a feature cell is not a usable number (a phrase), or None when it is one."""
    if not text.strip():
        return "is empty"
    try:
        value = float(text)
    except ValueError:
        return f"has {shorten_cell(text)}, which is not a number"
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        return f"has {shorten_cell(text)}, which is not a finite float32 number"
    return None


def shorten_cell(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def check_header(row: list[str]) -> list[str]:
    """The column names of a header row; refuses a missing header and unusable names."""
    names = [cell.strip() for cell in row]
    if not any(names):
        raise InvalidDataset(f"The CSV's first line is empty; it must name the columns. {CSV_HINT}")
    if all(is_number(name) for name in names):
        preview = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise InvalidDataset(
            f"The CSV's first line ({preview}) is numbers, not a header; add a header row "
            f"naming the columns. {CSV_HINT}"
        )
    if "" in names:
        raise InvalidDataset(
            f"Column {names.index('') + 1} of the CSV header has no name; name every column "
            "(pandas writes an unnamed index column unless you pass index=False)."
        )
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise InvalidDataset(
            f"The CSV header repeats the column name(s) {', '.join(map(repr, repeated[:5]))}; "
            "column names must be unique."
        )
    return names


def row_length_error(line: int, values: int, columns: int) -> InvalidDataset:
    return InvalidDataset(
        f"Line {line} of the CSV has {values} values but the header has {columns} columns."
    )


def numbered_rows(lines: Iterable[str], delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each row that is not blank, the header first."""
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        for row in reader:
            if row:
                yield reader.line_num, row
    except csv.Error as exc:
        raise InvalidDataset(
            f"The CSV cannot be parsed at line {reader.line_num}: {shorten(exc)}."
        ) from exc


def read_csv(
    path: Path, label_column: str, limits: DatasetLimits, chunk_rows: int = CHUNK_ROWS
) -> Arrays:
    """Read every row; the label column is optional unless it was renamed from 'label'."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            delimiter = pick_delimiter(handle.readline(1024 * 1024))
            handle.seek(0)
            return _read_rows(numbered_rows(handle, delimiter), label_column, limits, chunk_rows)
    except UnicodeDecodeError as exc:
        raise not_utf8(exc) from exc


def not_utf8(exc: UnicodeDecodeError) -> InvalidDataset:
    return InvalidDataset(f"The CSV is not UTF-8 text ({shorten(exc)}); save it as UTF-8.")


def _read_rows(
    rows: Iterator[tuple[int, list[str]]],
    label_column: str,
    limits: DatasetLimits,
    chunk_rows: int,
) -> Arrays:
    names = check_header(next(rows, (1, []))[1])
    label_index = _label_index(names, label_column)
    feature_index = [i for i in range(len(names)) if i != label_index]
    if not feature_index:
        raise InvalidDataset(
            f"The CSV has only the label column {label_column!r}; it needs at least one "
            "numeric feature column."
        )
    check_size(0, len(feature_index), limits)
    feature_names = [names[i] for i in feature_index]
    labels = None if label_index is None else _Labels(label_column, label_index)
    blocks: list[np.ndarray] = []
    samples = 0
    for lines, cells in _chunks(rows, len(names), chunk_rows):
        samples += len(cells)
        check_size(samples, len(feature_index), limits)
        features = [[row[i] for i in feature_index] for row in cells]
        blocks.append(_parse_features(features, lines, feature_names, label_column))
        if labels is not None:
            labels.add(cells, lines)
    if samples < 2:
        raise InvalidDataset(f"The CSV has {samples} data row(s); at least 2 are needed.")
    x = np.concatenate(blocks)  # (N, D) float32
    if labels is None:
        return Arrays(x)
    y, class_names = labels.result()
    return Arrays(x, y, class_names=class_names)


def _label_index(names: list[str], label_column: str) -> int | None:
    if label_column in names:
        return names.index(label_column)
    if label_column != DEFAULT_LABEL_COLUMN:
        shown = ", ".join(map(repr, names[:10])) + (", ..." if len(names) > 10 else "")
        raise InvalidDataset(
            f"dataset.label_column is {label_column!r} but the CSV has no such column "
            f"(columns: {shown}). Name the label column, or leave label_column unset for "
            "unlabeled data."
        )
    return None


def _chunks(
    rows: Iterator[tuple[int, list[str]]], columns: int, chunk_rows: int
) -> Iterator[tuple[list[int], list[list[str]]]]:
    lines: list[int] = []
    cells: list[list[str]] = []
    for line, row in rows:
        if len(row) != columns:
            raise row_length_error(line, len(row), columns)
        lines.append(line)
        cells.append(row)
        if len(cells) == chunk_rows:
            yield lines, cells
            lines, cells = [], []
    if cells:
        yield lines, cells


def _parse_features(
    cells: list[list[str]], lines: list[int], names: list[str], label_column: str
) -> np.ndarray:
    """(R, D) float32 from strings; on a bad cell, an error naming its column and line."""
    try:
        with np.errstate(over="ignore"):
            block = np.array(cells, dtype=np.float64).astype(np.float32)
        if np.isfinite(block).all():
            return block
    except ValueError:
        pass
    for line, row in zip(lines, cells, strict=True):
        for name, text in zip(names, row, strict=True):
            problem = cell_problem(text)
            if problem is not None:
                raise InvalidDataset(feature_error(name, problem, line, label_column))
    raise AssertionError("a block that numpy refused has no bad cell")  # pragma: no cover


def feature_error(column: str, problem: str, line: int, label_column: str | None) -> str:
    """The message for a bad feature cell, with what to do about it."""
    text = f"Line {line} of the CSV: column {column!r} {problem}."
    if problem == "is empty":
        return f"{text} Fill in or drop rows with missing values."
    if "not a finite" in problem:
        return f"{text} Remove or impute it."
    if label_column is None:
        return f"{text} Every column but the label column must be numeric."
    return (
        f"{text} Every column but the label column ({label_column!r}) must be numeric; if "
        f"{column!r} holds the class labels, set dataset.label_column to {column!r}."
    )


class _Labels:
    """The label column, read a chunk at a time: integer indices or class names, never both."""

    def __init__(self, column: str, index: int) -> None:
        self.column = column
        self.index = index
        self.codes: dict[str, int] = {}  # class name -> code in order of first appearance
        self.first_number: tuple[str, int] | None = None
        self.first_name: tuple[str, int] | None = None
        self.chunks: list[np.ndarray] = []

    def add(self, rows: list[list[str]], lines: list[int]) -> None:
        out = np.empty(len(rows), dtype=np.int64)  # (R,)
        for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
            text = row[self.index].strip()
            if not text:
                raise InvalidDataset(
                    f"Line {line} has no label in column {self.column!r}; give every row a "
                    "label, or drop the column for unlabeled data."
                )
            if is_number(text):
                self.first_number = self.first_number or (text, line)
                out[i] = self._index(text, line)
            else:
                self.first_name = self.first_name or (text, line)
                out[i] = self.codes.setdefault(text, len(self.codes))
            if self.first_number and self.first_name:
                (number, n_line), (name, c_line) = self.first_number, self.first_name
                raise InvalidDataset(
                    f"The label column {self.column!r} mixes numbers ({number!r} on line "
                    f"{n_line}) and class names ({name!r} on line {c_line}); use one or the other."
                )
        self.chunks.append(out)

    def _index(self, text: str, line: int) -> int:
        value = float(text)
        if not value.is_integer() or value < 0:
            raise InvalidDataset(
                f"The label column {self.column!r} has {shorten_cell(text)} on line {line}; "
                "labels must be class indices 0, 1, 2, ... or class names."
            )
        return int(value)

    def result(self) -> tuple[np.ndarray, list[str] | None]:
        """(N,) int64 labels, and the class names when the labels were names."""
        y = np.concatenate(self.chunks)
        if not self.codes:
            return y, None
        names = sorted(self.codes)
        remap = np.empty(len(names), dtype=np.int64)
        for index, name in enumerate(names):
            remap[self.codes[name]] = index
        return remap[y], names


@dataclass
class CsvSample:
    """What the first rows of a CSV say about it."""

    columns: list[str]
    delimiter: str
    rows_sampled: int
    rows_estimate: int
    complete: bool  # the sample is the whole file, so rows_estimate is exact
    text_columns: dict[str, str]  # column -> its first value that is not a number, and where


def sample_csv(path: Path, max_rows: int = 1000, max_bytes: int = 16 * 1024**2) -> CsvSample:
    """Check the header and up to `max_rows` rows, reading at most `max_bytes`."""
    raw, complete = _head_lines(path, max_rows + 1, max_bytes)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise not_utf8(exc) from exc
    first_line = text.split("\n", 1)[0]
    delimiter = pick_delimiter(first_line)
    rows = numbered_rows(io.StringIO(text, newline=""), delimiter)
    names = check_header(next(rows, (1, []))[1])
    sampled, text_columns = _scan_sample(rows, names, max_rows)
    if sampled == 0:
        raise InvalidDataset(f"The CSV has a header but no data rows. {CSV_HINT}")
    estimate = sampled
    if not complete:
        header_bytes = len(first_line.encode()) + 1
        per_row = max(1.0, (len(raw) - header_bytes) / sampled)
        estimate = round((path.stat().st_size - header_bytes) / per_row)
    return CsvSample(names, delimiter, sampled, estimate, complete, text_columns)


def _scan_sample(
    rows: Iterator[tuple[int, list[str]]], names: list[str], max_rows: int
) -> tuple[int, dict[str, str]]:
    sampled = 0
    text_columns: dict[str, str] = {}
    for line, row in rows:
        if sampled == max_rows:
            break
        if len(row) != len(names):
            raise row_length_error(line, len(row), len(names))
        sampled += 1
        for name, cell in zip(names, row, strict=True):
            problem = cell_problem(cell)
            if problem is None or name in text_columns:
                continue
            if "not a number" not in problem:
                raise InvalidDataset(feature_error(name, problem, line, None))
            text_columns[name] = f"{shorten_cell(cell)} on line {line}"
    return sampled, text_columns


def _head_lines(path: Path, lines: int, max_bytes: int) -> tuple[bytes, bool]:
    """The file's first `lines` whole lines (or what fits in `max_bytes`), and whether that
    is the whole file."""
    buffer = bytearray()
    with path.open("rb") as handle:
        while buffer.count(b"\n") < lines and len(buffer) < max_bytes:
            block = handle.read(min(256 * 1024, max_bytes - len(buffer)))
            if not block:
                return bytes(buffer), True
            buffer += block
        at_end = not handle.read(1)
    end = -1
    for _ in range(lines):
        end = buffer.find(b"\n", end + 1)
        if end < 0:
            break
    if end < 0:  # max_bytes reached first
        end = buffer.rfind(b"\n")
        if end < 0:
            raise InvalidDataset(
                f"The CSV's first line is longer than {max_bytes:,} bytes; is this a CSV file?"
            )
    return bytes(buffer[: end + 1]), at_end and end + 1 == len(buffer)
