"""Layers paired automatically: feature and relation terms that name no layers compare the
penultimate features (the inputs of both classifier heads), the report says so, and a
teacher whose layers cannot be paired gets a message saying to name them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.worker.kd.conftest import job_spec
from worker.kd.engine import distill, prepare
from worker.kd.errors import InvalidSpec
from worker.kd.exports.tensor import export_onnx
from worker.kd.spec import CNNStudent
from worker.kd.students import build_student, load_file_student
from worker.kd.tasks.tensor_job import build_objective
from worker.kd.training.pairing import pair_layers, penultimate_layer
from worker.kd.training.reporting import MemoryReporter

LENGTH, CLASSES = 16, 3
MLP = {"arch": "mlp", "hidden": [12]}  # Flatten, Linear, ReLU, Linear: the head is "3"
CNN_TEACHER = CNNStudent(arch="cnn", channels=[4], hidden=8)  # ..., Linear(4, 8), ReLU, Linear
CNN_HEAD_INPUT = "9:input"  # AddChannel, conv, bn, relu, pool, avgpool, flatten, 7, 8, 9
TRAINING = {"epochs": 2, "batch_size": 32, "learning_rate": 1e-2}


@pytest.fixture(scope="module")
def signals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1-D signals whose class is the segment with the largest mean."""
    x = np.random.default_rng(0).normal(size=(96, LENGTH)).astype(np.float32)
    y = x[:, : CLASSES * 5].reshape(96, CLASSES, 5).mean(axis=2).argmax(axis=1).astype(np.int64)
    path = tmp_path_factory.mktemp("signals") / "signals.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def cnn_teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same small cnn as a TorchScript file and as an ONNX model."""
    torch.manual_seed(0)
    model = build_student(CNN_TEACHER, (LENGTH,), CLASSES).eval()
    directory = tmp_path_factory.mktemp("teacher")
    torch.jit.script(model).save(str(directory / "teacher.pt"))
    export_onnx(model, torch.randn(4, LENGTH), directory / "teacher.onnx")
    return {"torchscript": directory / "teacher.pt", "onnx": directory / "teacher.onnx"}


def losses_spec(*terms: dict[str, Any], teacher_format: str = "auto") -> Any:
    return job_spec(
        MLP,
        teacher={"file_id": "t", "format": teacher_format},
        training=TRAINING,
        distillation={"losses": list(terms)},
    )


def test_penultimate_layers_are_the_inputs_of_the_heads(cnn_teachers: dict[str, Path]) -> None:
    x = torch.randn(2, LENGTH)
    student = build_student(job_spec(MLP).student, (LENGTH,), CLASSES)
    assert penultimate_layer(student, x) == "3:input"
    assert penultimate_layer(torch.jit.load(str(cnn_teachers["torchscript"])), x) == CNN_HEAD_INPUT


@pytest.mark.parametrize("kind", ["hint", "rkd_distance", "sp", "pkt", "rkd_angle", "cosine"])
def test_a_term_without_layers_is_paired_penultimate_to_penultimate(
    kind: str, cnn_teachers: dict[str, Path], signals: Path
) -> None:
    prepared = prepare(losses_spec({"kind": "kd"}, {"kind": kind}), cnn_teachers["torchscript"],
                       signals)  # fmt: skip
    student = build_student(prepared.spec.student, (LENGTH,), CLASSES)
    objective = build_objective(prepared, student)
    (term,) = [t for t in objective.loss.terms if t.name == kind]
    assert (term.student_layer, term.teacher_layer) == ("3:input", CNN_HEAD_INPUT)
    assert [p.as_dict() for p in objective.pairing] == [
        {"student": "3:input", "teacher": CNN_HEAD_INPUT, "how": "penultimate", "losses": [kind]}
    ]


def test_named_layers_are_kept_and_not_reported(cnn_teachers: dict[str, Path]) -> None:
    named = {"kind": "hint", "student_layer": "2", "teacher_layer": "8"}
    teacher = torch.jit.load(str(cnn_teachers["torchscript"]))
    student = build_student(job_spec(MLP).student, (LENGTH,), CLASSES)
    terms, pairing = pair_layers([named], student, teacher, torch.randn(2, LENGTH))
    assert terms == [named] and pairing == []


def test_a_job_with_feature_and_relation_terms_and_no_layers_trains_and_reports_the_pairing(
    cnn_teachers: dict[str, Path], signals: Path, tmp_path: Path
) -> None:
    terms = [{"kind": "kd", "weight": 0.5}, {"kind": "ce", "weight": 0.5}, {"kind": "hint"},
             {"kind": "rkd_distance"}, {"kind": "sp", "weight": 10.0}]  # fmt: skip
    reporter = MemoryReporter()
    prepared = prepare(losses_spec(*terms), cnn_teachers["torchscript"], signals)
    report = distill(prepared, tmp_path, reporter).report
    assert report["layer_pairing"] == [
        {
            "student": "3:input",
            "teacher": CNN_HEAD_INPUT,
            "how": "penultimate",
            "losses": ["hint", "rkd_distance", "sp"],
        }
    ]
    paired = [data for kind, _, data in reporter.events if kind == "layers_paired"]
    assert paired == report["layer_pairing"]
    hint = [value for name, value, _, _ in reporter.metrics if name == "train_hint_epoch"]
    assert len(hint) == TRAINING["epochs"] and all(np.isfinite(hint))
    assert report["student"]["accuracy"] is not None


def test_an_onnx_teacher_needs_its_layers_named(
    cnn_teachers: dict[str, Path], signals: Path
) -> None:
    prepared = prepare(losses_spec({"kind": "hint"}), cnn_teachers["onnx"], signals)
    student = build_student(prepared.spec.student, (LENGTH,), CLASSES)
    with pytest.raises(InvalidSpec, match=r"losses\[0\] \('hint'\) names no layers, and the onnx "
                       r"teacher .*: name the layers, \"teacher_layer\""):  # fmt: skip
        build_objective(prepared, student)


def test_the_spec_accepts_feature_and_relation_terms_without_layers() -> None:
    spec = losses_spec({"kind": "kd"}, {"kind": "hint"}, {"kind": "rkd_distance"}, {"kind": "sp"})
    assert [t.student_layer for t in spec.distillation.losses or []] == [None] * 4


def test_a_file_student_is_paired_by_its_head_too(
    cnn_teachers: dict[str, Path], signals: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    student_file = tmp_path / "student.pt"
    torch.jit.script(build_student(job_spec(MLP).student, (LENGTH,), CLASSES)).save(
        str(student_file)
    )
    spec = job_spec(
        {"arch": "file", "file_id": "s"},
        teacher={"file_id": "t"},
        training=TRAINING,
        distillation={"losses": [{"kind": "kd"}, {"kind": "pkt"}]},
    )
    prepared = prepare(spec, cnn_teachers["torchscript"], signals, student_file)
    student = load_file_student(student_file)
    objective = build_objective(prepared, student)
    assert [(p.student, p.teacher) for p in objective.pairing] == [("3:input", CNN_HEAD_INPUT)]
