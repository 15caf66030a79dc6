"""Student size from the spec (issue 15, item 2): the torch-free count matches the built
model, is a lower bound without the data's shape, and the worker's meta-device check
refuses a student past the limit without allocating it."""

from __future__ import annotations

import pytest
import torch

from worker.kd.errors import InvalidSpec
from worker.kd.spec import CNNStudent, JobSpec, MLPStudent, ResNetStudent
from worker.kd.student_size import student_parameters
from worker.kd.students import build_student
from worker.kd.tasks.tensor_job import check_student_fits

CASES = [
    (MLPStudent(arch="mlp", hidden=[7, 5]), (3, 4), 3),
    (CNNStudent(arch="cnn", channels=[4, 6], kernel_size=3, hidden=9), (2, 8, 8), 5),
    (CNNStudent(arch="cnn", channels=[4], kernel_size=5, hidden=9), (20,), 4),
    (CNNStudent(arch="cnn", channels=[4], layout="2d", hidden=3), (8, 8), 2),
    (CNNStudent(arch="cnn", channels=[4, 3]), (3, 16), 2),
    (ResNetStudent(arch="resnet", depth=14, width=8), (3, 16, 16), 10),
]


@pytest.mark.parametrize(("student", "shape", "classes"), CASES)
def test_count_equals_the_built_model(student: object, shape: tuple, classes: int) -> None:
    built = build_student(student, shape, classes)
    exact = sum(p.numel() for p in built.parameters())
    assert student_parameters(student, shape, classes) == exact
    lower = student_parameters(student)
    assert lower is not None and lower <= exact


def test_the_issue_students_are_counted_in_the_billions() -> None:
    mlp = MLPStudent(arch="mlp", hidden=[65536] * 32)
    cnn = CNNStudent(arch="cnn", channels=[4096] * 16, kernel_size=31, layout="2d")
    assert (student_parameters(mlp) or 0) > 4_000_000_000
    assert (student_parameters(cnn) or 0) > 100_000_000_000


def test_worker_refuses_a_student_whose_input_makes_it_too_large() -> None:
    """Small in the spec, huge on this data: 4M features into 4096 units (some 16 billion
    parameters). The meta device holds shapes only, so nothing is allocated."""
    spec = JobSpec.model_validate(
        {
            "teacher": {"file_id": "t"},
            "student": {"arch": "mlp", "hidden": [4096]},
            "dataset": {"file_id": "d"},
        }
    )
    with pytest.raises(InvalidSpec, match="DISTILLERY_MAX_STUDENT_PARAMS") as caught:
        check_student_fits(spec, (4_000_000,), 10, max_params=100_000_000)
    assert f"{student_parameters(spec.student, (4_000_000,), 10):,}" in caught.value.message
    check_student_fits(spec, (64,), 10, max_params=100_000_000)  # a sane one still fits
    assert torch.empty(0).device.type == "cpu"  # the meta device did not leak out
