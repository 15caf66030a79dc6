"""student.onnx for a transformer student: one function of (input_ids, attention_mask),
traced once and checked with onnxruntime against the PyTorch student on batches of other
sizes, lengths and padding than the traced one."""

from __future__ import annotations

import importlib
import inspect
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worker.kd.errors import shorten
from worker.kd.exports.onnx import TOLERANCE, Signature, export_checked
from worker.kd.hf import measure
from worker.kd.hf.generate import prompt_split
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


# A causal LM's decoder with past key values -----------------------------------------------

WITH_PAST = "student_with_past.onnx"
CHECK_STEPS = 4  # decoding steps checked per prompt
CHECK_PROMPTS = 3


class DecoderWithPast(nn.Module):
    """One decoding step as a function of tensors: (input_ids (B, T), attention_mask
    (B, P + T), past.{i}.key, past.{i}.value (B, heads, P, head_dim) for each layer i) ->
    (logits (B, T, V), present.{i}.key, present.{i}.value (B, heads, P + T, head_dim)).
    Positions follow the mask (left padding works); a first step passes P = 0."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model, self.layers = model, layers

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=config_of(self.model))
        for layer in range(self.layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        length = input_ids.shape[1]
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]  # (B, T)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=positions, use_cache=True,
                         **{cache_argument(self.model): cache})  # fmt: skip
        presents: list[torch.Tensor] = []
        for layer in returned_cache(out).layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def cache_argument(model: nn.Module) -> str:
    """The forward's name for the cache: `cache` (transformers >= 5.2x), else the older
    `past_key_values`."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def returned_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def past_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def export_with_past(
    prepared: HFPrepared, out_dir: Path, recorder: RecordingReporter
) -> tuple[dict[str, Path], dict[str, Any]]:
    """student_with_past.onnx for a causal-LM student (`DecoderWithPast`, traced by the
    TorchScript-based exporter), checked by greedy decoding with onnxruntime: at every step
    its logits against the PyTorch student's on the whole sequence without a cache. The
    figures (or why there is no file) are returned for the report and also written into
    the ONNX files' metadata (`past_key_values`: true or false)."""
    if prepared.task != "causal_lm":
        return {}, {}
    path = out_dir / WITH_PAST
    student, training = prepared.student, prepared.student.training
    model = student.cpu().eval()
    try:
        with measure.torch_threads(1):
            info = _export_with_past(prepared, model, path)
    except Exception as exc:
        path.unlink(missing_ok=True)
        reason = f"the exporter could not write a decoder with past key values: {shorten(exc)}"
        recorder.event("onnx_past_export_failed", f"{WITH_PAST} was not written: {reason}")
        info = {"past_key_values": False, "reason": reason}
    finally:
        student.train(training).to(prepared.device)
    with_past = WITH_PAST if path.exists() else "none"
    _annotate(out_dir / "student.onnx", {"past_key_values": "false", "with_past": with_past})
    return ({WITH_PAST: path} if path.exists() else {}), info


def _export_with_past(prepared: HFPrepared, model: nn.Module, path: Path) -> dict[str, Any]:
    tokenizer, val = prepared.teacher.tokenizer, prepared.val
    with torch.no_grad():
        probe = returned_cache(model(input_ids=torch.tensor([[0, 0]]), use_cache=True))
    layers = len(probe.layers)
    _, heads, _, head_dim = probe.layers[0].keys.shape
    wrapper = DecoderWithPast(model, layers).eval()
    inputs, outputs = ["input_ids", "attention_mask", *past_names(layers, "past")], [
        "logits", *past_names(layers, "present")]  # fmt: skip
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
        "logits": {0: "batch", 1: "sequence"},
        **{name: {0: "batch", 2: "past"} for name in inputs[2:]},
        **{name: {0: "batch", 2: "total"} for name in outputs[1:]},
    }  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    past = [torch.randn(2, heads, 3, head_dim, generator=generator) for _ in inputs[2:]]
    example = (torch.randint(int(config_of(model).vocab_size), (2, 2), generator=generator),
               torch.ones(2, 5, dtype=torch.long), *past)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, example, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=TRACE_OPSET, dynamo=False)  # fmt: skip
    prompts = [prompt_split(val, i)[0] for i in range(min(len(val), CHECK_PROMPTS))]
    worst = max(_decode_check(model, path, prompt, layers, heads, head_dim) for prompt in prompts)
    if worst > TOLERANCE * 100:
        raise ValueError(f"onnxruntime differs from PyTorch by {worst:.3g} while decoding")
    shape = {"layers": layers, "heads": heads, "head_dim": head_dim}
    _annotate(path, {"past_key_values": "true", "pad_token_id": str(tokenizer.pad_token_id),
                     **{k: str(v) for k, v in shape.items()}})  # fmt: skip
    checked = {"prompts": len(prompts), "steps": CHECK_STEPS}
    return {"past_key_values": True, "file": WITH_PAST, "inputs": inputs, "outputs": outputs,
            "max_abs_diff": worst, "checked": checked, **shape}  # fmt: skip


def _decode_check(
    model: nn.Module, path: Path, prompt: list[int], layers: int, heads: int, head_dim: int
) -> float:
    """Greedy decoding through the file (the prompt with an empty past, then one token a
    step): the largest |onnxruntime - PyTorch| of each step's last logits, PyTorch running
    the whole sequence without a cache."""
    ort = importlib.import_module("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = past_names(layers, "past")
    past = [np.zeros((1, heads, 0, head_dim), dtype=np.float32) for _ in names]
    sequence, step_ids = list(prompt), list(prompt)
    worst = 0.0
    for _ in range(CHECK_STEPS):
        feed = {"input_ids": np.array([step_ids], dtype=np.int64),
                "attention_mask": np.ones((1, len(sequence)), dtype=np.int64),
                **dict(zip(names, past, strict=True))}  # fmt: skip
        logits, *past = session.run(None, feed)
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([sequence]), use_cache=False).logits[0, -1]
        worst = max(worst, float((torch.from_numpy(logits[0, -1]) - expected).abs().max()))
        step_ids = [int(logits[0, -1].argmax())]
        sequence.append(step_ids[0])
    return worst


def _annotate(path: Path, values: dict[str, str]) -> None:
    """Key-value metadata in an ONNX file (onnxruntime: session.get_modelmeta())."""
    if not path.exists():
        return
    onnx = importlib.import_module("onnx")
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **values})
    onnx.save(model, str(path))
