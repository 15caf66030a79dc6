"""What a file is, judged by its bytes, never by its name: the one format sniffer.

Pure Python (no torch, numpy or Pillow), so the API's upload checks and the worker's
loaders read a file by the same rules. One vocabulary, `FileFormat`: `sniff_file` names any
upload with it (the file object's `format`); `sniff_dataset` narrows it to what a tensor
dataset can be; the teacher registry (worker.kd.teachers.registry) starts from
`sniff_file` and adds what needs a parser (ONNX).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Literal

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
PICKLE_MAGIC = b"\x80"
MAX_SAFETENSORS_HEADER = 100 * 2**20  # the safetensors library's own limit
# A Hugging Face model directory: config.json beside these weights (pickled ones are
# recognised so that they can be refused by name).
HF_WEIGHTS = "model.safetensors"
HF_PICKLED_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
NPY_MAGIC = b"\x93NUMPY"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HEAD_BYTES = 512
# The keys that make a JSONL row a text example (worker.kd.hf.textdata reads them).
JSONL_ROW_KEYS = ("text", "prompt", "messages")
ACCEPTED = (
    "an NPZ of arrays (np.savez), a CSV file with a header row, or a ZIP of image folders "
    "(one folder per class, PNG/JPEG)"
)
# Text may hold tabs and line ends; other control characters mean binary.
_CONTROL = frozenset(chr(c) for c in range(32)) - {"\t", "\n", "\r", "\f"}

Kind = Literal["npz", "image_zip", "zip", "npy", "csv", "unknown"]  # a tensor dataset's
TextFormat = Literal["jsonl", "text"]
FileFormat = Literal[
    "npz", "image_zip", "zip", "npy", "csv", "jsonl", "text", "pickle", "torchscript",
    "torch_export", "hf_zip", "safetensors", "unknown",
]  # fmt: skip


def sniff_file(path: Path, head: bytes | None = None) -> FileFormat:
    """Any file: the ZIP family (`npz`, `image_zip`, `torchscript`, `torch_export`,
    `hf_zip`, `zip`), `npy`, `pickle`, `safetensors`, `jsonl`/`text` (lines for a
    transformer's dataset), `csv`, or `unknown`."""
    if head is None:
        head = read_head(path)
    if head.startswith(ZIP_MAGICS):
        return sniff_zip_file(path)
    if head.startswith(NPY_MAGIC):
        return "npy"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if is_safetensors(path, head):
        return "safetensors"
    text = sniff_text(head)  # before CSV: JSONL and text lines are delimited text too
    if text is not None:
        return text
    if looks_like_csv(head):
        return "csv"
    return "unknown"


def read_head(path: Path, size: int = HEAD_BYTES) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def sniff_zip_file(
    path: Path,
) -> Literal["npz", "image_zip", "torchscript", "torch_export", "hf_zip", "zip", "unknown"]:
    """A ZIP by its members: arrays, images, a scripted or exported model, a model
    directory, or any other ZIP."""
    kind = sniff_zip(path)
    if kind != "zip":
        return kind
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any("/code/" in name for name in names) and any(n.endswith("data.pkl") for n in names):
        return "torchscript"
    if any(name.endswith(("archive_format", "serialized_exported_program.json")) for name in names):
        return "torch_export"
    if is_model_names(names):
        return "hf_zip"
    return "zip"


def is_model_zip(path: Path) -> bool:
    """A ZIP holding a `config.json` next to safetensors weights (or pickled ones, which
    the model-directory reader then refuses by name)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return is_model_names(names)


def is_model_names(names: list[str]) -> bool:
    root = model_root(names)
    weights = (HF_WEIGHTS, *HF_PICKLED_WEIGHTS)
    return root is not None and any(f"{root}{w}" in names for w in weights)


def model_root(names: list[str]) -> str | None:
    """The folder of the shallowest config.json in a ZIP's names ("" at the root)."""
    configs = [n for n in names if PurePosixPath(n).name == "config.json"]
    if not configs:
        return None
    shallowest = min(configs, key=lambda n: (n.count("/"), n))
    return shallowest[: -len("config.json")]


def is_safetensors(path: Path, head: bytes) -> bool:
    """8-byte little-endian header length, then that many bytes of JSON: an object."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    length = int.from_bytes(head[:8], "little")
    if not 2 <= length <= min(MAX_SAFETENSORS_HEADER, path.stat().st_size - 8):
        return False
    with open(path, "rb") as f:
        f.seek(8)
        try:
            return isinstance(json.loads(f.read(length)), dict)
        except ValueError:
            return False


def sniff_dataset(path: Path, head: bytes | None = None) -> Kind:
    """`npz` (a ZIP of .npy), `image_zip` (a ZIP holding PNG/JPEG files), `zip` (any other),
    `npy` (one bare array), `csv` (delimited text) or `unknown`."""
    if head is None:
        head = read_head(path)
    if head.startswith(ZIP_MAGICS):
        return sniff_zip(path)
    if head.startswith(NPY_MAGIC):
        return "npy"
    if looks_like_csv(head):
        return "csv"
    return "unknown"


def sniff_zip(path: Path) -> Literal["npz", "image_zip", "zip", "unknown"]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    if any(is_image_name(name) for name in names):
        return "image_zip"
    return "zip"


def is_image_name(name: str) -> bool:
    """A PNG/JPEG member by its name inside the archive (metadata folders excluded)."""
    parts = name.replace("\\", "/").split("/")
    if parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts if part):
        return False
    return parts[-1].lower().endswith(IMAGE_SUFFIXES)


def looks_like_csv(head: bytes) -> bool:
    """UTF-8 text without binary control characters, with a delimiter or a line end."""
    text = decode_head(head)
    if text is None or not text.strip() or any(ch in _CONTROL for ch in text):
        return False
    return any(mark in text for mark in (",", ";", "\t", "\n"))


def decode_head(head: bytes) -> str | None:
    """The first bytes of a file as UTF-8 text (a character cut at the end is dropped), or
    None when they are not UTF-8."""
    try:
        return head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3 or exc.reason != "unexpected end of data":
            return None
        return head[: exc.start].decode("utf-8-sig")


def sniff_text(head: bytes) -> TextFormat | None:
    """`jsonl` when the first line is a JSON object with a `text`, `prompt` or `messages`
    (the row kinds of worker.kd.hf.textdata); `text` for UTF-8 lines
    with no delimiters (so a CSV is never taken for text); else None."""
    decoded = decode_head(head)
    if decoded is None or "\n" not in decoded:
        return None
    lines = [line.strip() for line in decoded.splitlines() if line.strip()]
    if not lines:
        return None
    if lines[0].startswith("{"):
        return "jsonl" if _first_object_has_text(lines[0], decoded) else None
    complete = lines[:-1] if len(lines) > 1 and not decoded.endswith("\n") else lines
    if any(ch in line for line in complete for ch in ",;\t") or any(
        ord(ch) < 32 for line in complete for ch in line
    ):
        return None
    return "text" if any(not _is_number(line) for line in complete[1:] or complete) else None


def _first_object_has_text(first: str, decoded: str) -> bool:
    try:
        value = json.loads(first)
    except ValueError:
        # a first line longer than the head
        return "\n" not in decoded and any(f'"{key}"' in first for key in JSONL_ROW_KEYS)
    return isinstance(value, dict) and any(key in value for key in JSONL_ROW_KEYS)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
