"""The student as the teacher's draft model (assisted generation) and generation tokens/s;
uploaded `hf_file` students and the tokenizer check."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.kd.hf.factories import gpt2_dir, sentences, write_jsonl, zip_dir
from worker.kd.engine import prepare
from worker.kd.errors import IncompatibleModels, InvalidTeacher
from worker.kd.hf import models
from worker.kd.hf.generate import split_prompt
from worker.kd.hf.models import from_teacher, load_model, load_tokenizer
from worker.kd.hf.speculative import generation_speed, speculative
from worker.kd.jobs import HFPrepared
from worker.kd.spec import JobSpec


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gpt2_dir(tmp_path_factory.mktemp("spec") / "m")


def prompts(tokenizer: Any, n: int = 4) -> list[list[int]]:
    texts = [text for text, _ in sentences(n, seed=3)]
    return [split_prompt(tokenizer(text)["input_ids"])[0] for text in texts]


def test_speculative_tokens_are_the_teachers_and_acceptance_is_a_share(teacher_dir: Path) -> None:
    teacher, tokenizer = load_model(teacher_dir, "causal_lm"), load_tokenizer(teacher_dir)
    student = from_teacher(teacher, [0, 2]).eval()
    pad, eos = int(tokenizer.pad_token_id), tokenizer.eos_token_id
    figures = speculative(teacher, student, prompts(tokenizer), 12, pad, eos)
    assert figures["identical"] is True
    assert figures["prompts"] == 4 and figures["drafted"] >= figures["accepted"] >= 0
    assert figures["acceptance_rate"] is None or 0.0 <= figures["acceptance_rate"] <= 1.0
    assert figures["speedup"] > 0.0
    # The teacher as its own draft: every drafted token is accepted.
    itself = speculative(teacher, load_model(teacher_dir, "causal_lm"), prompts(tokenizer), 12,
                         pad, eos)  # fmt: skip
    assert itself["identical"] is True and itself["drafted"] > 0
    assert itself["acceptance_rate"] == 1.0
    # The counting hook is gone after the block: plain assisted generation still works.
    assert "_get_candidate_generator" not in vars(teacher)


def test_generation_speed_at_batch_1_and_8(teacher_dir: Path) -> None:
    teacher, tokenizer = load_model(teacher_dir, "causal_lm"), load_tokenizer(teacher_dir)
    student = from_teacher(teacher, [0])
    pad, eos = int(tokenizer.pad_token_id), tokenizer.eos_token_id
    speed = generation_speed(teacher, student, prompts(tokenizer, 3), 4, pad, eos)
    assert speed["new_tokens"] == 4
    for model in ("teacher", "student"):
        assert set(speed[model]) == {"batch_1", "batch_8"}
        assert all(v > 0 for v in speed[model].values())


# hf_file students -------------------------------------------------------------------------


def other_tokenizer_model(directory: Path, vocab_size: int, texts: list[str]) -> Path:
    """A 2-layer GPT-2 whose byte-level BPE is trained on `texts` to `vocab_size`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<|endoftext|>"])  # fmt: skip
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")  # fmt: skip
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def hf_file_job(files: tuple[Path, Path], student: Path) -> HFPrepared:
    spec = JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": {"arch": "hf_file", "file_id": "s"},
        "dataset": {"file_id": "d", "max_length": 24},
        "distillation": {"method": "sequence"},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "device": "cpu"},
    })  # fmt: skip
    prepared = prepare(spec, *files, student_path=student)
    assert isinstance(prepared, HFPrepared)
    prepared.teacher.cleanup()
    return prepared


@pytest.fixture(scope="module")
def files(teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hf_file")
    return zip_dir(teacher_dir, root / "t.zip"), write_jsonl(root / "d.jsonl", 20, labeled=False)


def test_hf_file_student_sharing_the_tokenizer_is_loaded(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    student = zip_dir(gpt2_dir(tmp_path / "s", layers=2, seed=1), tmp_path / "s.zip")
    prepared = hf_file_job(files, student)
    config: Any = prepared.student.config
    assert config.n_layer == 2 and prepared.student.training
    assert all(p.requires_grad for p in prepared.student.parameters())
    expected = load_model(tmp_path / "s", "causal_lm").state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in prepared.student.state_dict().items())


def test_hf_file_student_with_another_vocabulary_is_refused(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    texts = [text for text, _ in sentences(200)]
    smaller = other_tokenizer_model(tmp_path / "small", 280, texts)
    with pytest.raises(IncompatibleModels, match=r"vocabulary size 280 \(student\) against"):
        hf_file_job(files, zip_dir(smaller, tmp_path / "small.zip"))
    # Same size (300 tokens), merges learnt from other text: the token-to-id map differs.
    other = other_tokenizer_model(tmp_path / "other", 300, [t.upper() for t in texts])
    with pytest.raises(IncompatibleModels, match=r"token .* has id \d+ in the teacher and"):
        hf_file_job(files, zip_dir(other, tmp_path / "other.zip"))


def test_teacher_and_student_zips_are_extracted_to_scratch_removed_when_done(
    teacher_dir: Path, files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both loaders extract through one helper: the teacher's scratch lives until
    `cleanup()`, the student's goes as soon as its weights are loaded, and a ZIP that does
    not load leaves no scratch behind for either."""
    scratch_root = tmp_path / "scratch"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))  # where mkdtemp puts them

    teacher = models.load_teacher(files[0], None)
    assert list(scratch_root.iterdir()) == [teacher.scratch]
    assert teacher.scratch.name.startswith("distillery-hf-") and teacher.task == "causal_lm"
    assert (teacher.directory / "config.json").is_file()
    student_dir = gpt2_dir(tmp_path / "s", layers=2, seed=1)
    student = models.load_file_student(
        zip_dir(student_dir, tmp_path / "s.zip"), "causal_lm", teacher.tokenizer
    )
    assert list(scratch_root.iterdir()) == [teacher.scratch]  # the student's is gone
    expected = models.load_model(student_dir, "causal_lm").state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in student.state_dict().items())
    assert student.training and all(p.requires_grad for p in student.parameters())

    broken = tmp_path / "broken"  # passes the layout check, fails to load once extracted
    shutil.copytree(student_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # the header reads, the tensors do not
    broken_zip = zip_dir(broken, tmp_path / "broken.zip")
    with pytest.raises(InvalidTeacher, match="cannot load the causal_lm model"):
        models.load_file_student(broken_zip, "causal_lm", teacher.tokenizer)
    with pytest.raises(InvalidTeacher, match="cannot load the causal_lm model"):
        models.load_teacher(broken_zip, None)
    assert list(scratch_root.iterdir()) == [teacher.scratch]
    teacher.cleanup()
    assert list(scratch_root.iterdir()) == []
