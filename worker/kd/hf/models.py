"""Transformer models: the teacher loaded offline from its extracted ZIP, the students
built from it (`from_teacher`: DistilBERT's initialisation; `hf`: a fresh, smaller config),
one forward pass that gives what the losses need, and sentence-transformers pooling."""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from worker.kd.datasets.archives import ArchiveLimits, safe_extract
from worker.kd.errors import (
    IncompatibleModels,
    InvalidDataset,
    InvalidSpec,
    InvalidTeacher,
    shorten,
)
from worker.kd.hf.data import LOSS_MASK
from worker.kd.hf.layout import ModelLayout, config_value, read_layout
from worker.kd.hf.topk import TopK
from worker.kd.spec import FromTeacherStudent, HFFileStudent, HFStudent

MODEL_LIMITS = ArchiveLimits(max_members=10_000, max_total_bytes=16 * 1024**3, max_ratio=1000.0)
SENTENCE_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
AUTO_CLASSES = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "sentence_embedding": "AutoModel",
    "causal_lm": "AutoModelForCausalLM",
}


@dataclass
class LoadedTeacher:
    """The extracted directory, the frozen model and its tokenizer."""

    directory: Path  # the model directory (inside `scratch`)
    scratch: Path  # delete with `cleanup()` when the job is done
    layout: ModelLayout
    task: str
    model: nn.Module
    tokenizer: Any

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


@dataclass
class Outputs:
    """One forward pass: the task's output and, when asked, per-layer tensors."""

    output: torch.Tensor  # (B, K) logits | (B, D) embedding | (B, T, V) next-token logits
    hidden_states: tuple[torch.Tensor, ...] = ()  # L+1 of (B, T, H); [0] is the embeddings
    attentions: tuple[torch.Tensor, ...] = ()  # L of (B, heads, T, T)
    # method top_k: `output` holds the teacher's k largest logits (B, T, k), these the rest.
    top_k: TopK | None = None


def load_teacher(path: Path, task: str | None) -> LoadedTeacher:
    """Extract the ZIP (through the archive checks) and load model and tokenizer offline."""
    layout = read_layout(Path(path))
    chosen = layout.task or task
    if chosen is None:
        raise InvalidSpec(
            "The model directory does not say its task (config.json has no architectures "
            "entry, and there is no modules.json); give teacher.task: sequence_classification, "
            "sentence_embedding or causal_lm."
        )
    scratch, model, tokenizer = _extract_and_load(path, layout, chosen, "distillery-hf-")
    return LoadedTeacher(scratch / layout.root, scratch, layout, chosen, model, tokenizer)


def _extract_and_load(
    path: Path, layout: ModelLayout, task: str, prefix: str
) -> tuple[Path, nn.Module, Any]:
    """Extract the model ZIP at `path` (through the archive checks) into a fresh scratch
    directory named `prefix...` and load model and tokenizer offline from its
    `layout.root`. Returns (scratch, model, tokenizer); the caller owns `scratch`, which
    is removed here only when extracting or loading fails."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        safe_extract(Path(path), scratch, MODEL_LIMITS)
        directory = scratch / layout.root
        model = load_model(directory, task)
        tokenizer = load_tokenizer(directory)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return scratch, model, tokenizer


def load_model(directory: Path, task: str) -> nn.Module:
    """The model in `directory` for `task`: local files, safetensors only, eager attention
    (attention maps are a loss input)."""
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[task])
    try:
        model = auto.from_pretrained(
            str(directory), local_files_only=True, use_safetensors=True,
            attn_implementation="eager",
        )  # fmt: skip
    except Exception as exc:
        raise InvalidTeacher(f"transformers cannot load the {task} model: {shorten(exc)}") from exc
    module: nn.Module = model.eval()
    return module


def load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise InvalidTeacher(
            f"The model ZIP has no tokenizer transformers can load ({shorten(exc)}); save it "
            "with tokenizer.save_pretrained(dir) into the same directory."
        ) from exc
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers: pad with end-of-text
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise InvalidDataset("The tokenizer has no pad, end-of-text or unknown token to pad with.")
    return tokenizer


# Forward ----------------------------------------------------------------------------------


def forward(
    model: nn.Module,
    task: str,
    batch: dict[str, torch.Tensor],
    layout: ModelLayout | None,
    *,
    hidden: bool = False,
    attentions: bool = False,
) -> Outputs:
    """The task's output for a padded batch (`input_ids`, `attention_mask`, ...; its
    `loss_mask` is the objective's, not the model's)."""
    extra = {"use_cache": False} if task == "causal_lm" else {}
    inputs = {name: value for name, value in batch.items() if name != LOSS_MASK}
    out = model(**inputs, output_hidden_states=hidden or task == "sentence_embedding",
                output_attentions=attentions, **extra)  # fmt: skip
    states = tuple(out.hidden_states) if out.hidden_states is not None else ()
    if task == "sentence_embedding":
        result = pool(states[-1], batch["attention_mask"], layout)
    else:
        result = out.logits
    return Outputs(result, states if hidden else (), tuple(out.attentions or ()))


def pool(tokens: torch.Tensor, mask: torch.Tensor, layout: ModelLayout | None) -> torch.Tensor:
    """Sentence-transformers pooling of token states (B, T, H) into (B, H): mean (the
    default), CLS or max, as 1_Pooling/config.json says; L2-normalised with a Normalize
    module."""
    config = (layout.pooling if layout is not None else None) or {}
    weights = mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
    if config.get("pooling_mode_cls_token"):
        pooled = tokens[:, 0]
    elif config.get("pooling_mode_max_tokens"):
        pooled = tokens.masked_fill(weights == 0, torch.finfo(tokens.dtype).min).amax(dim=1)
    else:
        pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if layout is not None and layout.normalize:
        pooled = nn.functional.normalize(pooled, dim=-1)
    return pooled  # (B, H)


# Students ---------------------------------------------------------------------------------


def config_of(model: nn.Module) -> Any:
    """A transformers model's PretrainedConfig."""
    return cast(Any, model).config


def num_layers(model: nn.Module) -> int:
    value = config_value(config_of(model).to_dict(), "num_hidden_layers", "n_layer", "num_layers")
    if value is None:
        raise InvalidTeacher("The model's config names no layer count (num_hidden_layers).")
    return int(value)


def build_student(
    spec: Any, teacher: nn.Module, student_path: Path | None = None, tokenizer: Any = None,
    task: str | None = None,
) -> nn.Module:  # fmt: skip
    """The job's student: `from_teacher` layers, a fresh `hf` config, or the uploaded
    `hf_file` model at `student_path` (checked against the teacher's `tokenizer`)."""
    if isinstance(spec, FromTeacherStudent):
        return from_teacher(teacher, choose_layers(spec, num_layers(teacher)))
    if isinstance(spec, HFStudent):
        return fresh_student(teacher, spec.config)
    if isinstance(spec, HFFileStudent):
        if student_path is None or task is None:
            raise InvalidSpec("student.arch hf_file needs its uploaded model file (file_id).")
        return load_file_student(Path(student_path), task, tokenizer)
    raise InvalidSpec(
        f"A Hugging Face teacher takes a transformer student (arch from_teacher, hf or "
        f"hf_file), not {spec.arch!r}."
    )


def load_file_student(path: Path, task: str, teacher_tokenizer: Any) -> nn.Module:
    """An uploaded model-directory ZIP as the student, trainable, after checking that it
    shares the teacher's tokenizer (`tokenizer_difference`)."""
    layout = read_layout(path)
    if layout.task not in (None, task):
        raise IncompatibleModels(
            f"The student model is a {layout.task} model and the teacher a {task} model; "
            "upload a student of the teacher's task."
        )
    scratch, model, tokenizer = _extract_and_load(path, layout, task, "distillery-hf-student-")
    shutil.rmtree(scratch, ignore_errors=True)  # the weights are in memory now
    difference = tokenizer_difference(teacher_tokenizer, tokenizer, config_of(model))
    if difference is not None:
        raise IncompatibleModels(
            f"The student does not share the teacher's tokenizer: {difference}. Distillation "
            "compares the two models token by token; save the student with the teacher's "
            "tokenizer (tokenizer.save_pretrained) and a matching vocab_size."
        )
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model.train()


SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                  "mask_token")  # fmt: skip


def tokenizer_difference(teacher: Any, student: Any, student_config: Any) -> str | None:
    """The first difference between two tokenizers that makes token ids mean different
    things (vocabulary size, a special token, the token-to-id map), or None."""
    t_size, s_size = len(teacher), len(student)
    if t_size != s_size:
        return f"vocabulary size {s_size} (student) against {t_size} (teacher)"
    model_vocab = int(getattr(student_config, "vocab_size", 0) or 0)
    if model_vocab and model_vocab < t_size:
        return (
            f"the student model's vocab_size is {model_vocab}, below the tokenizer's "
            f"{t_size} tokens"
        )
    for name in SPECIAL_TOKENS:
        t_token, s_token = getattr(teacher, name, None), getattr(student, name, None)
        t_id, s_id = getattr(teacher, f"{name}_id", None), getattr(student, f"{name}_id", None)
        if (t_token, t_id) != (s_token, s_id):
            return (
                f"special token {name} is {s_token!r} (id {s_id}) in the student and "
                f"{t_token!r} (id {t_id}) in the teacher"
            )
    t_vocab, s_vocab = teacher.get_vocab(), student.get_vocab()
    for token, index in sorted(t_vocab.items(), key=lambda item: item[1]):
        if s_vocab.get(token) != index:
            other = s_vocab.get(token)
            where = "is missing" if other is None else f"has id {other}"
            return f"token {token!r} has id {index} in the teacher and {where} in the student"
    return None


def choose_layers(spec: FromTeacherStudent, depth: int) -> list[int]:
    """The teacher layers the student keeps: as given, or every other one (DistilBERT)."""
    if spec.layers is not None:
        bad = [i for i in spec.layers if i >= depth]
        if bad:
            raise InvalidSpec(f"student.layers {bad} do not exist; the teacher has {depth} layers.")
        return sorted(spec.layers)
    wanted = int(spec.num_layers or 1)
    if wanted > depth:
        raise InvalidSpec(f"student.num_layers is {wanted}; the teacher has only {depth} layers.")
    return [i * depth // wanted for i in range(wanted)]


def from_teacher(teacher: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A copy of the teacher with only `layers` of its stack, in order (Sanh et al. 2019,
    DistilBERT: the student is initialised from the teacher, taking one layer in two)."""
    student = copy.deepcopy(teacher)
    stack = _layer_stack(student, num_layers(teacher))
    kept = nn.ModuleList([stack.layers[i] for i in layers])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):  # caches and attention index layers by position
                cast(Any, module).layer_idx = new_index
    setattr(stack.parent, stack.name, kept)
    config = config_of(student)
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in layers]
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    return student.train()


@dataclass
class _Stack:
    parent: nn.Module
    name: str
    layers: nn.ModuleList


def _layer_stack(model: nn.Module, depth: int) -> _Stack:
    """The ModuleList of the transformer blocks (BERT's encoder.layer, GPT-2's h, ...)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == depth:
                return _Stack(parent, name, child)
    raise InvalidSpec("No stack of transformer layers found to copy from; use arch 'hf'.")


def fresh_student(teacher: nn.Module, overrides: dict[str, Any]) -> nn.Module:
    """A new model of the teacher's class with the teacher's config, `overrides` applied."""
    config = copy.deepcopy(config_of(teacher))
    known = config.to_dict()
    unknown = sorted(k for k in overrides if k not in known and k not in config.attribute_map)
    if unknown:
        raise InvalidSpec(f"student.config names {unknown}, which the teacher's config lacks.")
    for key, value in overrides.items():
        setattr(config, key, value)
    if hasattr(config, "layer_types") and config.layer_types is not None:
        config.layer_types = config.layer_types[: int(num_layers_of(config))]
    try:
        student: nn.Module = type(teacher)(config)
    except Exception as exc:
        raise InvalidSpec(f"student.config does not build a model: {shorten(exc)}") from exc
    return student.train()


def num_layers_of(config: Any) -> int:
    return int(config_value(config.to_dict(), "num_hidden_layers", "n_layer", "num_layers"))


def save_student(student: nn.Module, teacher: LoadedTeacher, directory: Path) -> None:
    """The student as a Hugging Face directory (safetensors) with the teacher's tokenizer,
    plus the sentence-transformers modules when the teacher was one."""
    directory.mkdir(parents=True, exist_ok=True)
    generation = getattr(teacher.model, "generation_config", None)
    if teacher.task == "causal_lm" and generation is not None:
        # The teacher's decoding defaults (eos, pad, bos ids...) travel with the student:
        # generation_config.json, which `generate` reads.
        cast(Any, student).generation_config = copy.deepcopy(generation)
    student.save_pretrained(str(directory))  # type: ignore[operator]
    if teacher.task == "causal_lm" and generation is not None:
        cast(Any, student).generation_config.save_pretrained(str(directory))
    teacher.tokenizer.save_pretrained(str(directory))
    if not teacher.layout.sentence_transformers:
        return
    for name in SENTENCE_FILES:
        if (teacher.directory / name).is_file():
            shutil.copy2(teacher.directory / name, directory / name)
    for folder in teacher.directory.iterdir():
        if folder.is_dir() and folder.name[:1].isdigit():  # 1_Pooling, 2_Normalize
            shutil.copytree(folder, directory / folder.name, dirs_exist_ok=True)
