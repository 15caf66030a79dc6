"""Honest evaluation and the verdict: the report's figures come from data no choice has
seen, and a baseline that beats the distilled student is said so (and kept, on request)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from app.cli_client import render_report
from worker.kd.engine import distill, prepare
from worker.kd.report import verdict as verdict_module
from worker.kd.report.summary import summarize, verdict_words
from worker.kd.report.verdict import chi_square_cc_p, decide, exact_binomial_p, mcnemar
from worker.kd.training.reporting import MemoryReporter

from .conftest import Digits, job_spec
from .test_kd_engine import val_set

# The verdict ---------------------------------------------------------------------------


def test_exact_binomial_golden_values() -> None:
    assert exact_binomial_p(10, 2) == pytest.approx(0.03857421875)  # 2 * 79 / 4096
    assert exact_binomial_p(2, 10) == pytest.approx(0.03857421875)
    assert exact_binomial_p(5, 5) == 1.0 and exact_binomial_p(0, 0) == 1.0
    assert exact_binomial_p(6, 0) == pytest.approx(0.03125)  # 2 / 64


def test_exact_binomial_without_scipy_is_the_same_test(monkeypatch: pytest.MonkeyPatch) -> None:
    with_scipy = [exact_binomial_p(b, c) for b, c in ((10, 2), (7, 3), (0, 9), (12, 12))]
    monkeypatch.setattr(verdict_module, "binomtest", None)
    without = [exact_binomial_p(b, c) for b, c in ((10, 2), (7, 3), (0, 9), (12, 12))]
    assert without == pytest.approx(with_scipy, rel=1e-12)


def test_chi_square_with_continuity_correction_golden_values() -> None:
    assert chi_square_cc_p(30, 10) == pytest.approx(0.0026631, rel=1e-4)  # (19^2)/40 = 9.025
    assert chi_square_cc_p(20, 20) == 1.0
    assert mcnemar(10, 2) == (pytest.approx(0.0386, abs=1e-4), "mcnemar_exact_binomial")
    assert mcnemar(30, 10)[1] == "mcnemar_chi_square_cc"


def pairs(both: int, student_only: int, baseline_only: int, neither: int) -> tuple[list, list]:
    student = [True] * both + [True] * student_only + [False] * baseline_only + [False] * neither
    baseline = [True] * both + [False] * student_only + [True] * baseline_only + [False] * neither
    return student, baseline


def test_verdict_outcomes() -> None:
    student, baseline = pairs(80, 10, 2, 8)
    kd = decide(student, baseline, kd_gain=0.08)
    assert kd["outcome"] == "kd_better" and kd["p_value"] == pytest.approx(0.0386, abs=1e-4)
    assert (kd["student_only_correct"], kd["baseline_only_correct"], kd["samples"]) == (10, 2, 100)
    assert (kd["kept"], kd["lost"]) == ("distilled", None)
    student, baseline = pairs(80, 6, 3, 11)
    assert decide(student, baseline, kd_gain=0.03)["outcome"] == "no_gain"
    student, baseline = pairs(80, 2, 10, 8)
    worse = decide(student, baseline, kd_gain=-0.08)
    assert (worse["outcome"], worse["kept"], worse["lost"]) == (
        "baseline_better",
        "distilled",
        0.08,
    )
    best = decide(student, baseline, kd_gain=-0.08, keep="best")
    assert (best["outcome"], best["kept"], best["lost"]) == ("baseline_better", "baseline", None)
    with pytest.raises(ValueError, match="same samples"):
        decide([True], [True, False], kd_gain=0.0)


def test_verdict_in_words() -> None:
    student, baseline = pairs(80, 2, 10, 8)
    report = {"kd_gain": -0.08, "verdict": decide(student, baseline, kd_gain=-0.08)}
    words = verdict_words(report)
    assert words is not None and "baseline without a teacher is better" in words
    assert "giving up 0.0800" in words and "keep: best" in words
    assert verdict_words({"verdict": {"outcome": None, "reason": "no labels"}}) == (
        "No verdict: no labels."
    )
    assert verdict_words({"kd_gain": None}) is None


# Held-out evaluation --------------------------------------------------------------------


def accuracy_on(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """What a user measures with the downloaded student on the evaluation arrays."""
    model = torch.jit.load(str(model_path)).eval()
    with torch.no_grad():
        preds = model(torch.from_numpy(x)).argmax(dim=1)
    return (preds == torch.from_numpy(y)).float().mean().item()


def test_poisoned_selection_split_never_enters_the_figures(
    teacher_path: Path, digits: Digits, tmp_path: Path
) -> None:
    """x_val selects, x_test reports: shuffling y_val (the selection labels) changes which
    epoch is kept at most, never what the figures are measured on."""
    x, y = digits.x, digits.y
    test, val, train = slice(0, 360), slice(360, 660), slice(660, None)
    rng = np.random.default_rng(0)
    arrays = {"x": x[train], "y": y[train], "x_val": x[val], "x_test": x[test], "y_test": y[test]}
    clean, poisoned = tmp_path / "clean.npz", tmp_path / "poisoned.npz"
    np.savez(clean, y_val=y[val], **arrays)
    np.savez(poisoned, y_val=rng.permutation(y[val]), **arrays)
    spec = job_spec(training={"epochs": 3})
    reports = {}
    for name, path in (("clean", clean), ("poisoned", poisoned)):
        out = tmp_path / name
        reports[name] = distill(prepare(spec, teacher_path, path), out, MemoryReporter()).report
        report = reports[name]
        assert report["evaluation"] == {
            "split": "x_test",
            "samples": 360,
            "selection": {"split": "x_val", "samples": 300},
        }
        assert report["validation"] == {"source": "x_test", "samples": 360, "labels": "dataset"}
        assert report["student"]["accuracy"] == accuracy_on(out / "student.pt", x[test], y[test])
        assert report["teacher"]["accuracy"] == accuracy_on(teacher_path, x[test], y[test])
    assert reports["poisoned"]["teacher"]["accuracy"] == reports["clean"]["teacher"]["accuracy"]
    # The poisoned labels would put any student near chance; the report is far above it.
    assert reports["poisoned"]["student"]["accuracy"] > 0.5


def test_x_val_alone_is_the_evaluation_split(
    teacher_path: Path, digits: Digits, tmp_path: Path
) -> None:
    """Without x_test, x_val/y_val are held out for evaluation; selection is carved."""
    x, y = digits.x, digits.y
    path = tmp_path / "val.npz"
    np.savez(path, x=x[400:], y=y[400:], x_val=x[:400], y_val=y[:400])
    report = distill(
        prepare(job_spec(training={"epochs": 2}), teacher_path, path),
        tmp_path / "o",
        MemoryReporter(),
    ).report
    assert report["evaluation"]["split"] == "x_val" and report["evaluation"]["samples"] == 400
    assert report["evaluation"]["selection"] == {"split": "carved", "samples": 279}  # 0.2 of 1397
    assert report["student"]["accuracy"] == accuracy_on(
        tmp_path / "o" / "student.pt", x[:400], y[:400]
    )


# keep: best ------------------------------------------------------------------------------


def test_keep_best_needs_a_baseline() -> None:
    with pytest.raises(ValueError, match="set baseline: true"):
        job_spec(keep="best")
    assert job_spec(baseline=True, keep="best").keep == "best"
    assert job_spec().keep == "distilled"


def test_keep_best_makes_a_better_baseline_the_student(
    digits: Digits, digits_npz: Path, tmp_path: Path
) -> None:
    """A teacher that knows nothing (random weights), taught with alpha 1: the baseline,
    trained on the labels, is significantly better, so keep: best ships its files."""
    torch.manual_seed(1)
    teacher = tmp_path / "random_teacher.pt"
    torch.jit.script(nn.Sequential(nn.Linear(64, 10)).eval()).save(str(teacher))
    spec = job_spec(
        training={"epochs": 4},
        distillation={"temperature": 4.0, "alpha": 1.0},
        baseline=True,
        keep="best",
    )
    reporter = MemoryReporter()
    out = tmp_path / "out"
    report = distill(prepare(spec, teacher, digits_npz), out, reporter).report
    verdict = report["verdict"]
    assert verdict["outcome"] == "baseline_better" and verdict["p_value"] < 0.05
    assert (verdict["keep"], verdict["kept"], verdict["lost"]) == ("best", "baseline", None)
    assert verdict["baseline_only_correct"] > verdict["student_only_correct"]
    assert report["kd_gain"] < 0
    x_eval, y_eval = val_set(digits)
    kept = accuracy_on(out / "student.pt", x_eval.numpy(), y_eval.numpy())
    assert kept == report["baseline"]["accuracy"] != report["student"]["accuracy"]
    kinds = [kind for kind, _, _ in reporter.events]
    assert "baseline_kept" in kinds
    finished = next(e for e in reporter.events if e[0] == "training_finished")
    assert finished[2]["verdict"]["outcome"] == "baseline_better"
    assert finished[1] == summarize(report)
    assert "baseline without a teacher is better" in finished[1]
    assert "the job's student is the baseline's files" in (out / "README.md").read_text()
    _, lines = render_report("job_x", report)  # `distillery report`
    assert any(
        line.startswith("Verdict: the baseline without a teacher is better") for line in lines
    )
    assert any("measured on: carved (359 samples, held out; chosen on carved" in x for x in lines)
