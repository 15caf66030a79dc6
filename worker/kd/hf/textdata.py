"""Text datasets: JSONL or plain text, one example per line. Pure Python: the API sniffs
and samples uploads with these same rules, and the worker reads them (tokenising is
`worker.kd.hf.data`'s).

A JSONL row is one of three kinds:

- `{"text": "...", "label": 0, "text_pair": "..."}` (label and text_pair optional): a
  text; every token counts;
- `{"prompt": "...", "completion": "..."}` (completion optional): for a causal LM the
  text is the prompt followed by the completion, exactly as written (put the space or
  newline between them in one of the two), and only the completion's tokens count in the
  loss and in perplexity; a prompt without a completion is a text whose every token
  counts (methods that generate complete it);
- `{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}`: a
  chat, rendered with the tokenizer's chat template when it has one, else one
  `role: content` line per message (`render_messages`). When the last message is the
  assistant's, it is the completion and everything before it the prompt; else the chat is
  a prompt.

A plain-text file is one text per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.kd.errors import InvalidDataset
from worker.kd.formats import JSONL_ROW_KEYS, TextFormat

MAX_EXAMPLES = 1_000_000
MAX_LINE_CHARS = 1_000_000
JSONL_HINT = (
    'Write one JSON object per line: {"text": "...", "label": 0} (label optional), '
    '{"prompt": "...", "completion": "..."} (completion optional) or {"messages": '
    '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}.'
)
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class TextExample:
    """One example. `text` is what the model reads; for a prompt row (or a chat) `prompt`
    is its first part, and when `completion` is set only the completion's tokens are
    learned and scored. `messages` keeps a chat's turns, for rendering with a tokenizer's
    chat template."""

    text: str
    text_pair: str | None = None
    label: int | None = None
    prompt: str | None = None
    completion: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) per turn

    @property
    def kind(self) -> str:
        return "messages" if self.messages else "prompt" if self.prompt is not None else "text"


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
    if not isinstance(row, dict):
        raise InvalidDataset(f"Line {number} is not a JSON object. {JSONL_HINT}")
    kinds = [key for key in JSONL_ROW_KEYS if key in row]
    if len(kinds) != 1:
        found = f"has {' and '.join(kinds)}" if kinds else "has none"
        raise InvalidDataset(
            f"Line {number} {found}: a row has exactly one of 'text', 'prompt' or 'messages'. "
            f"{JSONL_HINT}"
        )
    if kinds[0] != "text":
        for key in ("label", "text_pair"):
            if key in row:
                raise InvalidDataset(
                    f"Line {number}: {key!r} goes with 'text' rows only (this row has "
                    f"{kinds[0]!r}); remove it."
                )
        return _prompt_row(row, number) if kinds[0] == "prompt" else _chat_row(row, number)
    if not isinstance(row["text"], str):
        raise InvalidDataset(f"Line {number}: 'text' must be a string. {JSONL_HINT}")
    pair, label = row.get("text_pair"), row.get("label")
    if pair is not None and not isinstance(pair, str):
        raise InvalidDataset(f"Line {number}: 'text_pair' must be a string.")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
        raise InvalidDataset(f"Line {number}: 'label' must be a class index 0..K-1, not {label!r}.")
    return TextExample(row["text"], pair, label)


def _prompt_row(row: dict[str, Any], number: int) -> TextExample:
    prompt, completion = row["prompt"], row.get("completion")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidDataset(f"Line {number}: 'prompt' must be a non-empty string.")
    if completion is not None and (not isinstance(completion, str) or not completion):
        raise InvalidDataset(
            f"Line {number}: 'completion' must be a non-empty string (or left out: a prompt alone)."
        )
    return TextExample(prompt + (completion or ""), prompt=prompt, completion=completion)


def _chat_row(row: dict[str, Any], number: int) -> TextExample:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise InvalidDataset(
            f"Line {number}: 'messages' must be a non-empty list of "
            '{"role": ..., "content": ...} objects.'
        )
    turns = []
    for index, message in enumerate(messages):
        where = f"Line {number}, messages[{index}]"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise InvalidDataset(f'{where} must be an object {{"role": ..., "content": ...}}.')
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidDataset(
                f"{where}: 'role' must be one of {', '.join(ROLES)}, not {role!r}."
            )
        if not isinstance(content, str):
            raise InvalidDataset(f"{where}: 'content' must be a string.")
        turns.append((role, content))
    if len(turns) == 1 and turns[0][0] == "assistant":
        raise InvalidDataset(
            f"Line {number}: a chat of one assistant message has no prompt; start it with "
            "the user's (or system's) message, or write it as a 'text' row."
        )
    prompt, completion = render_messages(turns)
    return TextExample(prompt + (completion or ""), prompt=prompt, completion=completion,
                       messages=tuple(turns))  # fmt: skip


def render_messages(turns: Sequence[tuple[str, str]]) -> tuple[str, str | None]:
    """A chat as (prompt, completion) without a chat template: one `role: content` line
    per message; the prompt ends with `assistant: `, where the reply starts. The last
    message is the completion when it is the assistant's (with its newline)."""
    history, last = (turns[:-1], turns[-1]) if turns[-1][0] == "assistant" else (turns, None)
    prompt = "".join(f"{role}: {content}\n" for role, content in history) + "assistant: "
    return prompt, None if last is None else f"{last[1]}\n"


def describe(examples: list[TextExample], fmt: TextFormat) -> dict[str, object]:
    """A text dataset's details, as a file object lists them."""
    labels = [e.label for e in examples if e.label is not None]
    kinds = [e.kind for e in examples]
    return {
        "format": fmt,
        "samples": len(examples),
        "labeled": bool(labels),
        "classes": max(labels) + 1 if labels else None,
        "text_pairs": any(e.text_pair is not None for e in examples),
        "rows": {kind: kinds.count(kind) for kind in ("text", "prompt", "messages")},
        "completions": sum(e.completion is not None for e in examples),
    }
