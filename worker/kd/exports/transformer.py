"""student.onnx for a transformer student: one function of (input_ids, attention_mask),
traced once and checked with onnxruntime against the PyTorch student on batches of other
sizes, lengths and padding than the traced one."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.kd.errors import shorten
from worker.kd.hf import measure
from worker.kd.hf.models import config_of
from worker.kd.jobs import HFPrepared
from worker.kd.training.reporting import RecordingReporter

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "output"
# Opset 17 has LayerNormalization and runs on onnxruntime >= 1.14; pinned so that the file
# does not change with torch's default (17 in torch 2.2, 20 in 2.13).
TRACE_OPSET = 17
TOLERANCE = 1e-4  # fp32: max |onnxruntime - torch|, scaled by the output's size above 1

Batch = tuple[torch.Tensor, torch.Tensor]  # input_ids, attention_mask: each (B, T) int64


def export_onnx(
    prepared: HFPrepared, out_dir: Path, recorder: RecordingReporter
) -> dict[str, Path]:
    """student.onnx (inputs input_ids, attention_mask; dynamic batch and sequence), checked
    with onnxruntime; a failed export is reported, not fatal.

    `recorder.onnx_max_abs_diff` is the largest |onnxruntime - PyTorch| over `check_batches`:
    the traced batch, the longest validation text alone, up to 8 validation texts padded
    together, and random-token batches of 3 and 5 rows at two lengths with full, right- and
    left-padded rows (causal_lm: over the logits of real tokens). On the tiny test models
    it is at most 1.2e-7 for all three tasks, on those batches and on others of sizes 1-9
    and lengths 3-21 (it read 0.01-0.25 when the PyTorch side of the check ran with
    dropout on). Tracing and checking take 0.10-0.17 s there; the torch.export-based
    exporter (2.5-4 s there) runs only when tracing fails or misses TOLERANCE."""
    path = out_dir / "student.onnx"
    student, training = prepared.student, prepared.student.training
    # eval() on the wrapper, not only the student: the TorchScript exporter puts the
    # wrapper back into its earlier mode recursively, which would switch dropout back on.
    module = measure.TaskModule(student.cpu(), prepared.task, prepared.teacher.layout).eval()
    try:
        traced, checks = check_batches(prepared)
        per_token = prepared.task == "causal_lm"  # (B, T, V) logits, not (B, K) | (B, D)
        # One thread: a handful of small batches, and no thread waiting on a preempted other.
        with measure.torch_threads(1):
            recorder.onnx_max_abs_diff = export_checked(module, traced, checks, path, per_token)
    except Exception as exc:
        recorder.event("onnx_export_failed", f"student.onnx was not written: {shorten(exc)}")
        path.unlink(missing_ok=True)
        return {}
    finally:
        student.train(training).to(prepared.device)
    return {"student.onnx": path}


def export_checked(
    module: nn.Module, traced: Batch, checks: list[Batch], path: Path, per_token: bool = False
) -> float:
    """Export `module`, a function of (input_ids, attention_mask) in eval mode, by tracing
    it on `traced`; when that fails or its graph misses TOLERANCE on `checks`, try the
    torch.export-based exporter and keep the closer file. Returns the kept file's largest
    difference from `module` over `checks` (per_token: outputs (B, T, ...), compared on the
    real tokens only)."""
    trace_error: Exception | None = None
    try:
        export_graph(module, traced, path, per_token, dynamo=False)
        worst, scale = compare(module, path, checks, per_token)
        if worst <= TOLERANCE * max(1.0, scale):
            return worst
    except Exception as exc:
        trace_error, worst = exc, math.inf
    candidate = path.with_name(f"{path.stem}.dynamo{path.suffix}")
    try:
        export_graph(module, traced, candidate, per_token, dynamo=True)
        other, _ = compare(module, candidate, checks, per_token)
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
    module: nn.Module, batch: Batch, path: Path, per_token: bool, *, dynamo: bool
) -> None:
    """One torch.onnx.export call, batch and sequence dynamic, in either exporter."""
    options: dict[str, Any]
    if dynamo:
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
        options = {"dynamic_shapes": (dims, dims), "external_data": False, "verbose": False}
    else:
        axes = {0: "batch", 1: "sequence"}
        output_axes = axes if per_token else {0: "batch"}
        options = {
            "dynamic_axes": {INPUTS[0]: axes, INPUTS[1]: axes, OUTPUT: output_axes},
            "opset_version": TRACE_OPSET,
        }
    with warnings.catch_warnings():  # tracer and deprecation warnings: keep job logs clean
        warnings.simplefilter("ignore")
        torch.onnx.export(module, batch, str(path), input_names=list(INPUTS),
                          output_names=[OUTPUT], dynamo=dynamo, **options)  # fmt: skip


def compare(
    module: nn.Module, path: Path, checks: list[Batch], per_token: bool = False
) -> tuple[float, float]:
    """(largest |onnxruntime - torch|, largest |torch output|) over `checks`; per_token
    (causal_lm's logits) counts real tokens only: a padded position's output means nothing."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # As many threads as torch uses, none spin-waiting: on a shared CPU a spinning pool
    # starves the other processes and, with them, itself.
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst, scale = 0.0, 0.0
    for ids, mask in checks:
        (onnx_out,) = session.run(None, {INPUTS[0]: ids.numpy(), INPUTS[1]: mask.numpy()})
        with torch.no_grad():
            expected = module(ids, mask).float()
        got = torch.from_numpy(onnx_out).float()
        if per_token:
            real = mask.bool()  # (B, T)
            got, expected = got[real], expected[real]  # (N, V)
        worst = max(worst, float((got - expected).abs().max()))
        scale = max(scale, float(expected.abs().max()))
    return worst, scale


def check_batches(prepared: HFPrepared) -> tuple[Batch, list[Batch]]:
    """The batch to trace (the median-length and the shortest validation text, padded
    together) and the batches to check the file on: that one, then others of different
    sizes, lengths and padding, so that a shape or mask baked into the graph shows."""
    val, tokenizer = prepared.val, prepared.teacher.tokenizer
    by_length = sorted(range(len(val)), key=lambda i: len(val.features[i]["input_ids"]))
    cpu = torch.device("cpu")

    def texts(idx: list[int]) -> Batch:
        batch = val.batch(idx, tokenizer, cpu)
        return batch["input_ids"], batch["attention_mask"]

    # Two rows at least: with one, the torch.export-based exporter fixes the batch at 1.
    traced = texts([by_length[len(val) // 2], by_length[0]])
    longest = len(val.features[by_length[-1]]["input_ids"])
    vocab = int(config_of(prepared.student).vocab_size)
    generator = torch.Generator().manual_seed(0)
    pad = int(tokenizer.pad_token_id)
    return traced, [
        traced,
        texts([by_length[-1]]),
        texts(list(range(min(8, len(val))))),
        random_batch(vocab, pad, 3, longest, generator),
        random_batch(vocab, pad, 5, max(2, longest // 2), generator),
    ]


def random_batch(vocab: int, pad: int, rows: int, length: int, generator: torch.Generator) -> Batch:
    """`rows` rows of `length` random token ids below `vocab`: in turn full, right-padded
    to half their length and left-padded to a third."""
    ids = torch.randint(vocab, (rows, length), generator=generator)  # (B, T)
    mask = torch.ones(rows, length, dtype=torch.long)  # (B, T)
    for row in range(rows):
        if row % 3 == 1:
            mask[row, math.ceil(length / 2) :] = 0
        elif row % 3 == 2:
            mask[row, : length - max(1, length // 3)] = 0
    return ids.masked_fill(mask == 0, pad), mask
