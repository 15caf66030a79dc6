"""The one ONNX export path: a module written with named dynamic axes, by the TorchScript-
based exporter first and the torch.export-based one when that fails or its graph misses
TOLERANCE, then checked with onnxruntime against the torch module over example inputs.
The tensor student (`exports.tensor`) and the transformer student (`exports.transformer`)
differ only in their `Signature`."""

from __future__ import annotations

import contextlib
import importlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

TOLERANCE = 1e-4  # fp32: max |onnxruntime - torch|, scaled by the output's size above 1

Inputs = tuple[torch.Tensor, ...]  # the module's positional inputs, one batch


@dataclass(frozen=True)
class Signature:
    """Names and dynamic axes of the graph: `inputs` maps each input's name to its dynamic
    axes ({axis: name}; an axis name shared by inputs is one dimension), in the module's
    argument order. `opset` pins the TorchScript-based exporter's opset (None: torch's
    default). `mask`: the index of an input (B, T) whose nonzero entries select the output
    positions compared (outputs (B, T, ...) where a padded position means nothing)."""

    inputs: dict[str, dict[int, str]]
    output: str
    output_axes: dict[int, str] = field(default_factory=lambda: {0: "batch"})
    opset: int | None = None
    mask: int | None = None


def export_checked(
    module: nn.Module, traced: Inputs, checks: Sequence[Inputs], path: Path, signature: Signature
) -> float:
    """Export `module` (in eval mode) by tracing it on `traced`; when that fails or its graph
    misses TOLERANCE on `checks`, try the torch.export-based exporter and keep the closer
    file. Returns the kept file's largest |onnxruntime - torch| over `checks`."""
    trace_error: Exception | None = None
    try:
        export_graph(module, traced, path, signature, dynamo=False)
        worst, scale = compare(module, path, checks, signature)
        if worst <= TOLERANCE * max(1.0, scale):
            return worst
    except Exception as exc:
        trace_error, worst = exc, math.inf
    candidate = path.with_name(f"{path.stem}.dynamo{path.suffix}")
    try:
        export_graph(module, traced, candidate, signature, dynamo=True)
        other, _ = compare(module, candidate, checks, signature)
    except Exception:
        candidate.unlink(missing_ok=True)
        if trace_error is not None:
            raise trace_error from None
        return worst
    if other < worst:
        candidate.replace(path)
        return other
    candidate.unlink()
    return worst


def export_graph(
    module: nn.Module, example: Inputs, path: Path, signature: Signature, *, dynamo: bool
) -> None:
    """One torch.onnx.export call, the signature's axes dynamic, in either exporter (which
    only name them differently)."""
    options: dict[str, Any]
    if dynamo:
        names = {n for axes in signature.inputs.values() for n in axes.values()}
        dims = {name: torch.export.Dim(name) for name in sorted(names)}
        shapes = tuple({axis: dims[n] for axis, n in axes.items()}
                       for axes in signature.inputs.values())  # fmt: skip
        options = {"dynamic_shapes": shapes, "external_data": False, "verbose": False}
    else:
        options = {"dynamic_axes": {**signature.inputs, signature.output: signature.output_axes}}
        if signature.opset is not None:
            options["opset_version"] = signature.opset
    with _quiet():
        torch.onnx.export(module, example, str(path), input_names=list(signature.inputs),
                          output_names=[signature.output], dynamo=dynamo, **options)  # fmt: skip


def compare(
    module: nn.Module, path: Path, checks: Sequence[Inputs], signature: Signature
) -> tuple[float, float]:
    """(largest |onnxruntime - torch|, largest |torch output|) over `checks`; with a
    `signature.mask`, over the positions that mask marks real."""
    ort = importlib.import_module("onnxruntime")
    options = ort.SessionOptions()
    # As many threads as torch uses, none spin-waiting: on a shared CPU a spinning pool
    # starves the other processes and, with them, itself.
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst, scale = 0.0, 0.0
    for inputs in checks:
        named = zip(signature.inputs, inputs, strict=True)
        feed = {name: x.detach().cpu().numpy() for name, x in named}
        (onnx_out,) = session.run([signature.output], feed)
        with torch.no_grad():
            expected = module(*inputs).float()
        got = torch.from_numpy(onnx_out).float()
        if signature.mask is not None:
            real = inputs[signature.mask].bool()  # (B, T)
            got, expected = got[real], expected[real]  # (N, ...)
        worst = max(worst, float((got - expected).abs().max()))
        scale = max(scale, float(expected.abs().max()))
    return worst, scale


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters warn (tracer warnings, their own deprecations): keep job logs clean."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
