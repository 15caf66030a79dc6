"""The causal-LM task with headroom (tests/worker/kd/llm/factories.py), built once per test
session: the trained teacher's ZIP, and writers for its transfer and evaluation sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.kd.hf.factories import zip_dir
from tests.worker.kd.llm.factories import teacher_dir, write_prompts, write_texts
from worker.kd.spec import JobSpec

TRANSFER_TEXTS = 48  # what the student sees: a few dozen sentences
EVAL_TEXTS = 200  # the evaluation file: enough tokens for a steady perplexity
STUDENT = {"arch": "hf", "config": {"n_layer": 1, "n_embd": 32, "n_head": 2}}
TRAINING = {"epochs": 40, "batch_size": 16, "learning_rate": 3e-3, "seed": 0, "device": "cpu",
            "weight_decay": 0.01, "schedule": "warmup_cosine", "warmup_fraction": 0.05}  # fmt: skip


@dataclass(frozen=True)
class LMTask:
    """The teacher ZIP and the files a job reads, written once."""

    root: Path
    teacher_zip: Path
    transfer: Path  # TRANSFER_TEXTS text rows
    evaluation: Path  # EVAL_TEXTS text rows, none of them in the transfer set's seed

    def texts(self, name: str, n: int, seed: int) -> Path:
        return write_texts(self.root / name, n, seed)

    def prompts(self, name: str, n: int, seed: int) -> Path:
        return write_prompts(self.root / name, n, seed)


def lm_spec(**sections: Any) -> JobSpec:
    """A causal-LM job on the task: the small student, a stated budget, the evaluation file
    (`dataset.eval_file_id`), `sections` merged over the top level."""
    raw: dict[str, Any] = {
        "teacher": {"file_id": "t"},
        "student": STUDENT,
        "dataset": {"file_id": "d", "eval_file_id": "e", "max_length": 32},
        "training": TRAINING,
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    return JobSpec.model_validate(raw)


@pytest.fixture(scope="session")
def lm_task(tmp_path_factory: pytest.TempPathFactory) -> LMTask:
    root = tmp_path_factory.mktemp("lm_task")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: one thread is as fast, and kinder to a shared CPU
    try:
        directory = teacher_dir(root / "teacher")
    finally:
        torch.set_num_threads(threads)
    return LMTask(
        root,
        zip_dir(directory, root / "teacher.zip"),
        write_texts(root / "transfer.jsonl", TRANSFER_TEXTS, seed=10),
        write_texts(root / "eval.jsonl", EVAL_TEXTS, seed=5),
    )
