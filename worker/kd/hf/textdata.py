"""Text datasets: JSONL (`text`, optional `text_pair` and `label`) or plain text, one
example per line (an unlabeled transfer set). Pure Python: the API sniffs and samples
uploads with these same rules, and the worker reads them (tokenising is `engine`'s)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from worker.kd.errors import InvalidDataset
from worker.kd.formats import TextFormat

MAX_EXAMPLES = 1_000_000
MAX_LINE_CHARS = 1_000_000
JSONL_HINT = 'Write one JSON object per line: {"text": "...", "label": 0} (label optional).'


@dataclass(frozen=True)
class TextExample:
    text: str
    text_pair: str | None = None
    label: int | None = None


def read_text_dataset(path: Path, fmt: TextFormat) -> list[TextExample]:
    """Every example in the file; InvalidDataset names the first bad line."""
    examples = list(_examples(Path(path), fmt))
    if len(examples) < 2:
        raise InvalidDataset(f"The text dataset has {len(examples)} example(s); at least 2.")
    labeled = [e.label is not None for e in examples]
    if any(labeled) and not all(labeled):
        first = labeled.index(not labeled[0]) + 1
        raise InvalidDataset(
            f"Example {first} differs from the first in having a label; label every example "
            "or none."
        )
    return examples


def _examples(path: Path, fmt: TextFormat) -> Iterator[TextExample]:
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if number > MAX_EXAMPLES:
                raise InvalidDataset(f"The dataset has more than {MAX_EXAMPLES} lines.")
            if len(line) > MAX_LINE_CHARS:
                raise InvalidDataset(f"Line {number} is longer than {MAX_LINE_CHARS} characters.")
            if not line.strip():
                continue
            yield _jsonl_example(line, number) if fmt == "jsonl" else TextExample(line.strip())


def _jsonl_example(line: str, number: int) -> TextExample:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise InvalidDataset(f"Line {number} is not valid JSON ({exc}). {JSONL_HINT}") from exc
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise InvalidDataset(f"Line {number} has no string 'text'. {JSONL_HINT}")
    pair, label = row.get("text_pair"), row.get("label")
    if pair is not None and not isinstance(pair, str):
        raise InvalidDataset(f"Line {number}: 'text_pair' must be a string.")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
        raise InvalidDataset(f"Line {number}: 'label' must be a class index 0..K-1, not {label!r}.")
    return TextExample(row["text"], pair, label)


def describe(examples: list[TextExample], fmt: TextFormat) -> dict[str, object]:
    """A text dataset's details, as a file object lists them."""
    labels = [e.label for e in examples if e.label is not None]
    return {
        "format": fmt,
        "samples": len(examples),
        "labeled": bool(labels),
        "classes": max(labels) + 1 if labels else None,
        "text_pairs": any(e.text_pair is not None for e in examples),
    }
