"""The teacher-free baseline of a transformer job: the same student, initialisation and
budget on cross-entropy alone, measured like the student, and kd_gain the difference; no
baseline (with the reason) where there is nothing to train it on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.worker.kd.hf.factories import bert_dir, gpt2_dir, write_jsonl, zip_dir
from worker.kd.engine import distill, prepare
from worker.kd.hf.models import forward
from worker.kd.hf.objective import baseline_objective
from worker.kd.report.schema import REPORT_SCHEMA_VERSION
from worker.kd.spec import JobSpec
from worker.kd.tasks.transformer_job import HFPrepared, new_student
from worker.kd.training.reporting import MemoryReporter


def spec(student: dict[str, Any]) -> JobSpec:
    return JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": student,
        "dataset": {"file_id": "d", "max_length": 24},
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3},
        "baseline": True,
    })  # fmt: skip


def prepared_job(tmp_path: Path, task: str, student: dict[str, Any], labeled: bool) -> HFPrepared:
    model = gpt2_dir(tmp_path / "m") if task == "causal_lm" else bert_dir(tmp_path / "m", task)
    data = write_jsonl(tmp_path / "d.jsonl", 30, labeled=labeled)
    prepared = prepare(spec(student), zip_dir(model, tmp_path / "t.zip"), data)
    assert isinstance(prepared, HFPrepared)
    return prepared


@pytest.mark.parametrize(
    "student",
    [{"arch": "from_teacher", "num_layers": 2}, {"arch": "hf", "config": {"num_hidden_layers": 2}}],
)
def test_the_baseline_starts_where_the_student_started(
    tmp_path: Path, student: dict[str, Any]
) -> None:
    prepared = prepared_job(tmp_path, "sequence_classification", student, labeled=True)
    try:
        again = new_student(prepared).state_dict()
        first = prepared.student.state_dict()
        assert again.keys() == first.keys()
        assert all(torch.equal(again[k], v) for k, v in first.items())
    finally:
        prepared.teacher.cleanup()


def test_baseline_objective_is_next_token_cross_entropy(tmp_path: Path) -> None:
    prepared = prepared_job(tmp_path, "causal_lm", {"arch": "hf", "config": {"n_layer": 2}}, False)
    try:
        batch = prepared.train.batch([0, 1, 2], prepared.teacher.tokenizer, prepared.device)
        mask = batch["attention_mask"].bool()  # (B, T)
        assert not mask.all()
        out = forward(prepared.student, "causal_lm", batch, prepared.teacher.layout)
        loss, parts = baseline_objective("causal_lm")(out, out, batch, None)
        logits = out.output[:, :-1][mask[:, 1:]]  # (N, V): real tokens that have a next one
        expected = F.cross_entropy(logits, batch["input_ids"][:, 1:][mask[:, 1:]])
        torch.testing.assert_close(loss, expected)
        assert list(parts) == ["ce"]
    finally:
        prepared.teacher.cleanup()


@pytest.mark.parametrize(
    ("task", "student"),
    [
        ("sequence_classification", {"arch": "from_teacher", "num_layers": 2}),
        ("causal_lm", {"arch": "hf", "config": {"n_layer": 2}}),
    ],
)
def test_baseline_is_trained_and_kd_gain_reported(
    tmp_path: Path, task: str, student: dict[str, Any]
) -> None:
    prepared = prepared_job(tmp_path, task, student, labeled=task != "causal_lm")
    reporter = MemoryReporter()
    result = distill(prepared, tmp_path / "out", reporter)

    report = result.report
    baseline = report["baseline"]
    assert report["schema_version"] == REPORT_SCHEMA_VERSION and report["baseline_skipped"] is None
    assert baseline["parameters"] == report["student"]["parameters"]
    assert baseline["layers"] == 2 and baseline["steps"] == report["steps"] == 6
    if task == "causal_lm":  # the relative perplexity reduction
        ppl = report["perplexity"]
        assert baseline["perplexity"] == ppl["baseline"]
        assert report["kd_gain"] == pytest.approx(
            (ppl["baseline"] - ppl["student"]) / ppl["baseline"]
        )
    else:
        assert report["kd_gain"] == report["student"]["accuracy"] - baseline["accuracy"]
    verdict = report["verdict"]
    if task == "sequence_classification":  # McNemar on paired per-text predictions
        assert verdict["outcome"] in ("kd_better", "no_gain", "baseline_better")
        assert 0.0 <= verdict["p_value"] <= 1.0 and verdict["kept"] == "distilled"
    else:
        assert verdict["outcome"] is None and "not independent" in verdict["reason"]
    # The baseline learned from cross-entropy alone; the report measures it on the
    # evaluation texts, which no epoch's selection saw.
    names = {name for name, *_ in reporter.metrics}
    assert "baseline_loss_ce" in names and not any(
        n.startswith("baseline_loss_") and n != "baseline_loss_ce" for n in names
    )
    assert report["evaluation"]["split"] == "carved"
    assert (
        report["evaluation"]["samples"]
        == report["validation"]["samples"]
        == len(prepared.evaluation)
    )
    kinds = [kind for kind, _, _ in reporter.events]
    assert kinds.index("training_started") < kinds.index("baseline_started")
    assert reporter.fractions[-1] == pytest.approx(1.0)
    finished = reporter.events[-1]
    assert finished[0] == "training_finished" and finished[2]["kd_gain"] == report["kd_gain"]
    assert "without the teacher" in finished[1]
    assert "baseline" in result.artifacts["README.md"].read_text()


@pytest.mark.parametrize(
    ("task", "labeled", "reason"),
    [("sentence_embedding", False, "no target"), ("sequence_classification", False, "no labels")],
)
def test_no_baseline_without_a_target_says_why(
    tmp_path: Path, task: str, labeled: bool, reason: str
) -> None:
    prepared = prepared_job(tmp_path, task, {"arch": "from_teacher", "num_layers": 2}, labeled)
    reporter = MemoryReporter()
    report = distill(prepared, tmp_path / "out", reporter).report
    assert report["baseline"] is None and report["kd_gain"] is None
    assert reason in report["baseline_skipped"]
    assert report["verdict"] == {"outcome": None, "reason": report["baseline_skipped"]}
    skipped = [(m, d) for kind, m, d in reporter.events if kind == "baseline_skipped"]
    assert len(skipped) == 1 and skipped[0][1]["reason"] == report["baseline_skipped"]
    assert "baseline_started" not in [kind for kind, _, _ in reporter.events]
    assert not any(name.startswith("baseline_") for name, *_ in reporter.metrics)
    assert reporter.fractions[-1] == pytest.approx(1.0)
