"""Transformer jobs through the engine: layout, text data, DistilBERT init, the three tasks."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.kd.hf.factories import bert_dir, bert_tokenizer, gpt2_dir, write_jsonl, zip_dir
from worker.kd.engine import distill, prepare
from worker.kd.errors import InvalidSpec, InvalidTeacher
from worker.kd.formats import sniff_text
from worker.kd.hf.layout import read_layout
from worker.kd.hf.models import from_teacher
from worker.kd.spec import JobSpec
from worker.kd.tasks.transformer_job import HFPrepared
from worker.kd.training.reporting import MemoryReporter


def spec(student: dict[str, Any], **training: Any) -> JobSpec:
    return JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": student,
        "dataset": {"file_id": "d", "max_length": 24},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, **training},
    })  # fmt: skip


def test_sniff_text_tells_jsonl_text_and_csv_apart() -> None:
    assert sniff_text(b'{"text": "a b", "label": 1}\n{"text": "c"}\n') == "jsonl"
    assert sniff_text(b"the movie was good\nbad film\n") == "text"
    assert sniff_text(b"f1,kind,label\n1,a,b\n") is None
    assert sniff_text(b"x\n1\n2\n") is None


def test_layout_reads_task_and_refuses_pickles(tmp_path: Path) -> None:
    directory = bert_dir(tmp_path / "m", "sentence_embedding")
    layout = read_layout(zip_dir(directory, tmp_path / "m.zip", prefix="model/"))
    assert (layout.root, layout.task, layout.normalize) == ("model/", "sentence_embedding", True)
    assert layout.details()["num_layers"] == 4 and layout.details()["hidden_size"] == 32
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(InvalidTeacher, match="never unpickles"):
        read_layout(zip_dir(directory, tmp_path / "p.zip"))


def test_from_teacher_copies_every_other_layer(tmp_path: Path) -> None:
    from transformers import BertForSequenceClassification

    teacher = BertForSequenceClassification.from_pretrained(
        str(bert_dir(tmp_path / "m", "sequence_classification")), local_files_only=True
    )
    student: Any = from_teacher(teacher, [0, 2])
    assert student.config.num_hidden_layers == 2
    for mine, theirs in zip(
        student.bert.encoder.layer, teacher.bert.encoder.layer[::2], strict=True
    ):
        for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("task", "student"),
    [
        ("sequence_classification", {"arch": "from_teacher", "num_layers": 2}),
        ("sentence_embedding", {"arch": "from_teacher", "layers": [1, 3]}),
        ("causal_lm", {"arch": "hf", "config": {"n_layer": 2}}),
    ],
)
def test_each_task_distils_and_reports_the_triple(
    tmp_path: Path, task: str, student: dict[str, Any]
) -> None:
    model = gpt2_dir(tmp_path / "m") if task == "causal_lm" else bert_dir(tmp_path / "m", task)
    data = write_jsonl(tmp_path / "d.jsonl", 40, labeled=task == "sequence_classification")
    prepared = prepare(spec(student), zip_dir(model, tmp_path / "t.zip"), data)
    assert isinstance(prepared, HFPrepared)
    reporter = MemoryReporter()
    result = distill(prepared, tmp_path / "out", reporter)
    report = result.report
    assert report["task"] == task and report["student"]["layers"] == 2
    assert 0 < report["size_reduction"] < 1 and report["speedup_batch32"] > 0
    assert {"student.zip", "report.json", "metrics.csv"} <= set(result.artifacts)
    assert json.loads(result.artifacts["report.json"].read_text()) == report
    if task == "sentence_embedding":
        assert report["embedding"]["mean_cosine_student_teacher"] > 0.5
        names = zipfile.ZipFile(result.artifacts["student.zip"]).namelist()
        assert {"modules.json", "1_Pooling/config.json", "model.safetensors"} <= set(names)
    assert any(name == "val_accuracy" for name, *_ in reporter.metrics)
    assert reporter.events[-1][0] == "training_finished"
    check_cli_report(report)


def check_cli_report(report: dict[str, Any]) -> None:
    """`distillery report` shows a transformer job's own figures."""
    from rich.console import Console

    from app.cli_client import render_report

    table, lines = render_report("job_x", report)
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text() + "\n".join(lines)
    assert "latency ms (batch 32)" in text and f"{report['student']['parameters']:,}" in text
    assert f"{report['speedup_batch32']:.2f}x" in text
    assert f"sequence length: {report['sequence_length']}" in text
    if report["task"] == "sentence_embedding":
        cosine = report["embedding"]["mean_cosine_student_teacher"]
        assert f"mean cosine to teacher: {cosine:.4f}" in text


def test_transformer_students_need_a_transformer_teacher(tmp_path: Path) -> None:
    model = bert_dir(tmp_path / "m", "sequence_classification")
    data = write_jsonl(tmp_path / "d.jsonl", 20)
    with pytest.raises(InvalidSpec, match="do not exist"):
        prepare(
            spec({"arch": "from_teacher", "layers": [7]}), zip_dir(model, tmp_path / "t.zip"), data
        )
    with pytest.raises(InvalidSpec, match="lacks"):
        prepare(spec({"arch": "hf", "config": {"nope": 1}}), tmp_path / "t.zip", data)


def test_the_test_tokenizer_knows_its_words(tmp_path: Path) -> None:
    """The tiny BERT tokenizer maps the factory's words to their own ids (transformers 5
    silently ignores `vocab_file=` and maps everything to [UNK])."""
    tokenizer = bert_tokenizer(tmp_path)
    ids = tokenizer("good movie")["input_ids"]  # type: ignore[operator]
    assert 1 not in ids  # [UNK]
    assert len(ids) == 4
