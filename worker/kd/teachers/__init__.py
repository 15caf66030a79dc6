"""Teachers, by file format: a registry of loaders that all return one `Teacher` interface.

    format        file                                        layers (for feature losses)
    torchscript   torch.jit.script(model).save("t.pt")        none: TorchScript allows no hooks
    torch_export  torch.export.save(torch.export.export(...)) module paths ("layer3")
    onnx          torch.onnx.export(model, (x,), "t.onnx")    node output names ("relu_3")
    safetensors   save_file(model.state_dict(), ...) + arch   module paths of the arch

`load_teacher(path, spec, example)` sniffs the format when the spec says `auto` and returns a
frozen `Teacher`: `teacher(x)` gives logits (B, K); `teacher.features(x, layers)` gives
(logits, {layer: output}); `teacher.layers(example)` lists layers with per-sample shapes;
`teacher.num_parameters` counts weights for every format (use it, not `.parameters()`, which
ONNX teachers do not have). Nothing here unpickles an uploaded file; torch.export archives
are vetted before torch.export.load sees them (see `pt2_vetting`).
"""

from worker.kd.teachers import onnx_runtime, safetensors_arch, torch_export, torchscript
from worker.kd.teachers.base import EXPORT_HINT, Features, Teacher, check_logits, probe_teacher
from worker.kd.teachers.registry import (
    TEACHER_LOADERS,
    TeacherLoader,
    get_teacher_loader,
    load_teacher,
    looks_like,
    register_teacher,
    sniff_format,
)

__all__ = [
    "EXPORT_HINT",
    "TEACHER_LOADERS",
    "Features",
    "Teacher",
    "TeacherLoader",
    "check_logits",
    "get_teacher_loader",
    "load_teacher",
    "looks_like",
    "onnx_runtime",
    "probe_teacher",
    "register_teacher",
    "safetensors_arch",
    "sniff_format",
    "torch_export",
    "torchscript",
]
