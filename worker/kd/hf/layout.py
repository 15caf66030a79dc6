"""What a Hugging Face model-directory ZIP holds, from its member names, `config.json`,
`modules.json` and the safetensors header alone: no torch, no transformers, nothing
extracted. The API's upload check and the worker read a ZIP by these same rules."""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.kd.errors import InvalidTeacher
from worker.kd.formats import HF_PICKLED_WEIGHTS, HF_WEIGHTS, model_root

WEIGHTS = HF_WEIGHTS
PICKLED_WEIGHTS = HF_PICKLED_WEIGHTS
MAX_JSON_BYTES = 4 * 1024**2
MAX_HEADER_BYTES = 100 * 1024**2
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
SAVE_HINT = (
    "Zip the directory written by model.save_pretrained(dir, safe_serialization=True) and "
    "tokenizer.save_pretrained(dir) (or SentenceTransformer.save(dir))."
)
CLASSIFICATION_SUFFIX = "ForSequenceClassification"
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class ModelLayout:
    """A model directory inside a ZIP: `root` is its folder there ("" or "name/")."""

    root: str
    config: dict[str, Any]
    task: str | None  # read from the directory; None when it does not say
    sentence_transformers: bool
    pooling: dict[str, Any] | None  # 1_Pooling/config.json of a sentence-transformers dir
    normalize: bool  # a Normalize module follows the pooling
    parameters: int

    def details(self) -> dict[str, Any]:
        """What the file object lists about the model."""
        return {
            "format": "hf_zip",
            "model_type": self.config.get("model_type"),
            "task": self.task,
            "num_layers": config_value(self.config, "num_hidden_layers", "n_layer"),
            "hidden_size": config_value(self.config, "hidden_size", "n_embd", "d_model"),
            "vocab_size": self.config.get("vocab_size"),
            "num_labels": len(self.config.get("id2label") or {}) or None,
            "parameters": self.parameters,
            "sentence_transformers": self.sentence_transformers,
        }


def config_value(config: dict[str, Any], *names: str) -> Any:
    """The first of `names` the config sets (model families name sizes differently)."""
    return next((config[n] for n in names if config.get(n) is not None), None)


def read_layout(path: Path) -> ModelLayout:
    """The model directory in the ZIP `path`, or InvalidTeacher saying what is missing."""
    try:
        with zipfile.ZipFile(path) as archive:
            return _layout(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidTeacher(f"The teacher is not a readable ZIP archive ({exc}).") from exc


def _layout(archive: zipfile.ZipFile) -> ModelLayout:
    names = archive.namelist()
    root = model_root(names)
    if root is None:
        raise InvalidTeacher(f"The model ZIP has no config.json. {SAVE_HINT}")
    if f"{root}{WEIGHTS}" not in names:
        pickled = [w for w in PICKLED_WEIGHTS if f"{root}{w}" in names]
        found = f" (it has {pickled[0]}, which Distillery never unpickles)" if pickled else ""
        raise InvalidTeacher(f"The model ZIP has no {WEIGHTS}{found}. {SAVE_HINT}")
    config = _json(archive, f"{root}config.json")
    modules = _json(archive, f"{root}modules.json") if f"{root}modules.json" in names else None
    pooling, normalize = _sentence_modules(archive, root, modules)
    return ModelLayout(
        root=root,
        config=config,
        task="sentence_embedding" if modules is not None else task_of(config),
        sentence_transformers=modules is not None,
        pooling=pooling,
        normalize=normalize,
        parameters=_parameters(archive, f"{root}{WEIGHTS}"),
    )


def task_of(config: dict[str, Any]) -> str | None:
    """The task the config's `architectures` name, if any."""
    for arch in config.get("architectures") or []:
        if str(arch).endswith(CLASSIFICATION_SUFFIX):
            return "sequence_classification"
        if str(arch).endswith(CAUSAL_SUFFIXES):
            return "causal_lm"
    return None


def _sentence_modules(
    archive: zipfile.ZipFile, root: str, modules: Any
) -> tuple[dict[str, Any] | None, bool]:
    if modules is None:
        return None, False
    if not isinstance(modules, list):
        raise InvalidTeacher("modules.json must be a list of modules (sentence-transformers).")
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
    unknown = set(kinds) - {"Transformer", "Pooling", "Normalize"}
    if unknown:
        raise InvalidTeacher(
            f"modules.json uses {sorted(unknown)}; Distillery reads Transformer, Pooling and "
            "Normalize modules."
        )
    pooling = {"pooling_mode_mean_tokens": True}
    if "Pooling" in kinds:
        member = f"{root}{kinds['Pooling'].strip('/')}/config.json"
        pooling = _json(archive, member)
    return pooling, "Normalize" in kinds


def _json(archive: zipfile.ZipFile, member: str) -> Any:
    try:
        info = archive.getinfo(member)
    except KeyError as exc:
        raise InvalidTeacher(f"The model ZIP has no {member}. {SAVE_HINT}") from exc
    if info.file_size > MAX_JSON_BYTES:
        raise InvalidTeacher(f"{member} is {info.file_size} bytes; too large for a config.")
    try:
        value = json.loads(archive.read(member))
    except ValueError as exc:
        raise InvalidTeacher(f"{member} is not valid JSON ({exc}).") from exc
    if member.endswith("config.json") and not isinstance(value, dict):
        raise InvalidTeacher(f"{member} must hold a JSON object.")
    return value


def _parameters(archive: zipfile.ZipFile, member: str) -> int:
    """Floating-point weights counted from the safetensors header."""
    with archive.open(member) as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 2 <= length <= MAX_HEADER_BYTES:
            raise InvalidTeacher(f"{member} is not a safetensors file.")
        try:
            header = json.loads(handle.read(length))
        except ValueError as exc:
            raise InvalidTeacher(f"{member} has an unreadable safetensors header.") from exc
    return sum(
        math.prod(entry["shape"])
        for name, entry in header.items()
        if name != "__metadata__" and entry.get("dtype") in FLOAT_DTYPES
    )
