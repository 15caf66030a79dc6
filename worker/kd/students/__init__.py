"""Students by architecture (`registry`: mlp, cnn, resnet, or a TorchScript file); the
transformer students (from_teacher, hf) are built in worker.kd.hf.models."""

from worker.kd.students.registry import (
    STUDENT_SPEC,
    build_student,
    cnn_layout,
    get_student,
    load_file_student,
    parse_student_spec,
    register_student,
)

__all__ = [
    "STUDENT_SPEC",
    "build_student",
    "cnn_layout",
    "get_student",
    "load_file_student",
    "parse_student_spec",
    "register_student",
]
