"""student.onnx for a transformer student: one function of (input_ids, attention_mask),
traced once and checked with onnxruntime against the PyTorch student on batches of other
sizes, lengths and padding than the traced one."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from worker.kd.errors import shorten
from worker.kd.exports.onnx import Signature, export_checked
from worker.kd.hf import measure
from worker.kd.hf.models import config_of
from worker.kd.jobs import HFPrepared
from worker.kd.training.reporting import RecordingReporter

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "output"
# Opset 17 has LayerNormalization and runs on onnxruntime >= 1.14; pinned so that the file
# does not change with torch's default (17 in torch 2.2, 20 in 2.13).
TRACE_OPSET = 17

Batch = tuple[torch.Tensor, torch.Tensor]  # input_ids, attention_mask: each (B, T) int64


def export_onnx(
    prepared: HFPrepared, out_dir: Path, recorder: RecordingReporter
) -> dict[str, Path]:
    """student.onnx (inputs input_ids, attention_mask; dynamic batch and sequence), written
    and checked with onnxruntime by `exports.onnx.export_checked`; a failed export is
    reported, not fatal.

    `recorder.onnx_max_abs_diff` is the largest |onnxruntime - PyTorch| over `check_batches`:
    the traced batch, the longest validation text alone, up to 8 validation texts padded
    together, and random-token batches of 3 and 5 rows at two lengths with full, right- and
    left-padded rows (causal_lm: over the logits of real tokens). On the tiny test models
    it is at most 1.2e-7 for all three tasks, on those batches and on others of sizes 1-9
    and lengths 3-21 (it read 0.01-0.25 when the PyTorch side of the check ran with
    dropout on). Tracing and checking take 0.10-0.17 s there; the torch.export-based
    exporter (2.5-4 s there) runs only when tracing fails or misses `exports.onnx.TOLERANCE`."""
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
            recorder.onnx_max_abs_diff = export_checked(
                module, traced, checks, path, signature(per_token)
            )
    except Exception as exc:
        recorder.event("onnx_export_failed", f"student.onnx was not written: {shorten(exc)}")
        path.unlink(missing_ok=True)
        return {}
    finally:
        student.train(training).to(prepared.device)
    return {"student.onnx": path}


def signature(per_token: bool) -> Signature:
    """Inputs input_ids and attention_mask (B, T), batch and sequence dynamic; per_token
    (causal_lm's (B, T, V) logits): the output's sequence axis is dynamic too and only real
    tokens are compared, a padded position's output meaning nothing."""
    axes = {0: "batch", 1: "sequence"}
    return Signature(
        inputs={INPUTS[0]: axes, INPUTS[1]: axes},
        output=OUTPUT,
        output_axes=axes if per_token else {0: "batch"},
        opset=TRACE_OPSET,
        mask=1 if per_token else None,
    )


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
