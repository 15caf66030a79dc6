"""ONNX teachers (`torch.onnx.export(model, (x,), "teacher.onnx")`), run by onnxruntime.

The file is parsed as protobuf, never unpickled, and must hold its weights itself (external
data files could name any path on the worker). onnxruntime uses CUDA when this worker's
build has it and a GPU is present, else the CPU; inputs go in as NumPy arrays and logits come
back as tensors on the input's device. Layers are node output names ("relu_3", "/layer1/Add"):
to read them, a copy of the model lists them as extra graph outputs.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from worker.kd.errors import InvalidTeacher, fmt_shape, shorten
from worker.kd.teachers.base import EXPORT_HINT, Features, Teacher
from worker.kd.teachers.registry import looks_like, register_teacher
from worker.kd.training.features import LayerShapes

if TYPE_CHECKING:
    import onnx
    import onnxruntime

INPUT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}
# TensorProto data types counted as parameters: FLOAT, FLOAT16, DOUBLE, BFLOAT16.
FLOAT_TENSORS = {1, 10, 11, 16}
MAX_FEATURE_SESSIONS = 4  # sessions kept for distinct sets of requested layers


class OnnxTeacher(Teacher):
    format = "onnx"

    def __init__(self, model: onnx.ModelProto, session: onnxruntime.InferenceSession) -> None:
        super().__init__()
        self.model = model
        self.session = session
        (model_input,) = session.get_inputs()
        self.input_name: str = model_input.name
        self.input_dtype = INPUT_TYPES[model_input.type]
        self.logits_name: str = session.get_outputs()[0].name
        self.node_outputs = list(dict.fromkeys(o for n in model.graph.node for o in n.output if o))
        self.feature_sessions: dict[tuple[str, ...], onnxruntime.InferenceSession] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self._run(self.session, x, [self.logits_name])
        return logits

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, Features]:
        if not layers:
            return self(x), {}
        self._check_layers(layers, self.node_outputs)
        names = tuple(dict.fromkeys(layers))
        session = self._session_with_outputs(names)
        logits, *outputs = self._run(session, x, [self.logits_name, *names])
        return logits, dict(zip(names, outputs, strict=True))

    def layers(self, example: torch.Tensor) -> LayerShapes:
        names = tuple(self.node_outputs)
        session = _session(_with_outputs(self.model, names), self.session.get_providers())
        outputs = session.run(list(names), {self.input_name: self._array(example)})
        return [
            (name, tuple(int(d) for d in out.shape[1:]))
            for name, out in zip(names, outputs, strict=True)
            if isinstance(out, np.ndarray)
            and np.issubdtype(out.dtype, np.floating)
            and out.ndim >= 1
            and out.shape[0] == len(example)
        ]

    @property
    def num_parameters(self) -> int:
        """Elements of the float initializers, after whatever folding the exporter did."""
        return sum(
            math.prod(tensor.dims)
            for tensor in self.model.graph.initializer
            if tensor.data_type in FLOAT_TENSORS
        )

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        shape = self.session.get_inputs()[0].shape
        return tuple(d if isinstance(d, int) and d > 0 else None for d in shape[1:])

    @property
    def num_outputs(self) -> int:
        return len(self.session.get_outputs())

    @property
    def fixed_batch(self) -> int | None:
        batch = self.session.get_inputs()[0].shape[0]
        return batch if isinstance(batch, int) and batch > 0 else None

    def _session_with_outputs(self, names: tuple[str, ...]) -> onnxruntime.InferenceSession:
        if names not in self.feature_sessions:
            if len(self.feature_sessions) >= MAX_FEATURE_SESSIONS:
                self.feature_sessions.pop(next(iter(self.feature_sessions)))
            model = _with_outputs(self.model, names)
            self.feature_sessions[names] = _session(model, self.session.get_providers())
        return self.feature_sessions[names]

    def _run(
        self, session: onnxruntime.InferenceSession, x: torch.Tensor, names: list[str]
    ) -> list[torch.Tensor]:
        try:
            outputs = session.run(names, {self.input_name: self._array(x)})
        except Exception as exc:
            shape = session.get_inputs()[0].shape
            raise InvalidTeacher(
                f"The ONNX teacher (input {self.input_name!r} shaped {shape}) failed on inputs "
                f"of shape {fmt_shape(x.shape)}: {shorten(exc)}. Export it with a dynamic batch: "
                "torch.onnx.export(model, (x,), 'teacher.onnx', dynamic_shapes=({0: "
                "torch.export.Dim('batch')},))."
            ) from exc
        return [torch.from_numpy(np.asarray(out)).to(x.device) for out in outputs]

    def _array(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().contiguous().numpy().astype(self.input_dtype, copy=False)


@register_teacher("onnx")
def load_onnx(path: Path, arch: dict[str, Any] | None, example: Any) -> Teacher:
    onnx = _require("onnx")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidTeacher(
            f"The teacher file is not an ONNX model{looks_like(path)} "
            f"(onnx.load failed: {shorten(exc)}). {EXPORT_HINT}"
        ) from exc
    if not model.graph.node or not model.graph.output:
        raise InvalidTeacher(f"The ONNX file has no graph to run. {EXPORT_HINT}")
    if any(_is_external(tensor) for tensor in _tensors(model)):
        raise InvalidTeacher(
            "The ONNX model keeps its weights in separate files (external data), which cannot "
            "be uploaded with it. Export it as one file: torch.onnx.export(..., "
            "external_data=False), or onnx.save_model(model, path, save_as_external_data=False)."
        )
    session = _session(model, providers())
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type not in INPUT_TYPES:
        found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise InvalidTeacher(
            f"The ONNX model takes {len(inputs)} inputs ({found}); Distillery feeds it one float "
            "tensor (B, *input_shape)."
        )
    return OnnxTeacher(model, session)


def providers() -> list[str]:
    """CUDA when both onnxruntime's build and this machine have it, else the CPU."""
    ort = _require("onnxruntime")
    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(model: onnx.ModelProto, providers: list[str]) -> onnxruntime.InferenceSession:
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; warnings about unused initializers are noise
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    except Exception as exc:
        raise InvalidTeacher(
            f"onnxruntime cannot run the ONNX model: {shorten(exc)}. It must use standard ONNX "
            "operators (no custom ops); torch.onnx.export writes such models."
        ) from exc


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the named node outputs (types left to onnxruntime)."""
    onnx = _require("onnx")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {output.name for output in copy.graph.output}
    for name in names:
        if name not in existing:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor the model holds: initializers and node attributes, subgraphs included."""
    graphs = [model.graph]
    nodes = [node for function in model.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            yield from (sparse.values for sparse in graph.sparse_initializer)
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == 1 or len(tensor.external_data) > 0  # 1: EXTERNAL


def _require(name: str) -> Any:
    """onnx / onnxruntime, imported when first needed: the rest of the engine runs without."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise InvalidTeacher(
            f"This worker cannot read ONNX models ({name} is not installed). Upload the teacher "
            "as TorchScript or a torch.export program instead."
        ) from exc
