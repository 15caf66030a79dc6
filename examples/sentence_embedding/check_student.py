"""Load a downloaded student offline and compare its sentence embeddings with the teacher's.

Run: ``.venv/bin/python examples/sentence_embedding/check_student.py student.zip
[--teacher examples/sentence_embedding/teacher.zip]``

Unzips both, loads each with ``transformers`` (``AutoTokenizer``/``AutoModel``,
``local_files_only``), embeds a few sentences the way sentence-transformers does for these
models (the pooling ``1_Pooling/config.json`` names, L2-normalised when ``modules.json`` has
a Normalize module) and prints the student-teacher cosine of each sentence, then the
similarity of a few sentence pairs under both models. With sentence-transformers installed,
also loads the student with ``SentenceTransformer`` and prints how far its embeddings are
from the ones computed here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

HERE = Path(__file__).resolve().parent
SENTENCES = [
    "A man is playing a guitar on the street.",
    "Someone is making music outside.",
    "The stock market fell sharply this morning.",
    "Return the number of items in the list.",
    "Count how many elements the sequence holds.",
    "The cat sleeps on the warm windowsill.",
]
PAIRS = [(0, 1), (0, 2), (3, 4), (3, 5)]  # two paraphrase pairs, two unrelated ones


def unzip(path: Path, into: Path) -> Path:
    with zipfile.ZipFile(path) as archive:
        archive.extractall(into)
    return into


def pooling_mode(directory: Path) -> str:
    config_path = directory / "1_Pooling" / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return "cls" if config.get("pooling_mode_cls_token") else "mean"


def normalizes(directory: Path) -> bool:
    modules_path = directory / "modules.json"
    modules = json.loads(modules_path.read_text()) if modules_path.is_file() else []
    return any(str(m.get("type", "")).endswith("Normalize") for m in modules)


@torch.no_grad()
def embed(directory: Path, sentences: list[str]) -> torch.Tensor:
    """Sentence embeddings (N, D) from a model directory, offline."""
    tokenizer: Any = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model: Any = AutoModel.from_pretrained(str(directory), local_files_only=True)
    model.eval()
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    tokens = model(**batch).last_hidden_state  # (N, T, D)
    if pooling_mode(directory) == "cls":
        pooled = tokens[:, 0]
    else:
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)  # (N, T, 1)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, dim=-1) if normalizes(directory) else pooled


def layers(directory: Path) -> int:
    return int(json.loads((directory / "config.json").read_text())["num_hidden_layers"])


def check_sentence_transformers(directory: Path, expected: torch.Tensor) -> None:
    if importlib.util.find_spec("sentence_transformers") is None:
        print("sentence-transformers is not installed; skipped loading it that way")
        return
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(directory), device="cpu", local_files_only=True)
    got = torch.as_tensor(model.encode(SENTENCES, convert_to_numpy=True))
    print(f"SentenceTransformer loads the student; max |diff| {(got - expected).abs().max():.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path, help="student.zip downloaded from the job")
    parser.add_argument(
        "--teacher", type=Path, default=HERE / "teacher.zip", help="the teacher's ZIP"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    hf_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory() as tmp:
        student_dir = unzip(args.student, Path(tmp) / "student")
        teacher_dir = unzip(args.teacher, Path(tmp) / "teacher")
        student, teacher = embed(student_dir, SENTENCES), embed(teacher_dir, SENTENCES)
        print(f"student {layers(student_dir)} layers, teacher {layers(teacher_dir)} layers")
        cosines = F.cosine_similarity(student, teacher, dim=-1)
        for sentence, cosine in zip(SENTENCES, cosines.tolist(), strict=True):
            print(f"  cos(student, teacher) {cosine:.3f}  {sentence}")
        print(f"mean cosine student-teacher: {cosines.mean():.3f}")
        print("pair similarity          teacher  student")
        s_unit, t_unit = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
        s_sim, t_sim = s_unit @ s_unit.T, t_unit @ t_unit.T  # (N, N) cosines
        for i, j in PAIRS:
            print(f"  sentences {i} and {j}          {t_sim[i, j]:.3f}    {s_sim[i, j]:.3f}")
        check_sentence_transformers(student_dir, student)


if __name__ == "__main__":
    main()
