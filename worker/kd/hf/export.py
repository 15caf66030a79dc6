"""student.onnx for a transformer student: one function of (input_ids, attention_mask),
checked against the PyTorch student with onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from worker.kd.hf import measure
from worker.kd.history import RecordingReporter
from worker.kd.text import shorten

if TYPE_CHECKING:
    from worker.kd.hf.engine import HFPrepared


def export_onnx(
    prepared: HFPrepared, out_dir: Path, recorder: RecordingReporter
) -> dict[str, Path]:
    """student.onnx (inputs input_ids, attention_mask; dynamic batch and sequence), checked
    with onnxruntime; a failed export is reported, not fatal."""
    path = out_dir / "student.onnx"
    module = measure.TaskModule(prepared.student.cpu().eval(), prepared.task,
                                prepared.teacher.layout)  # fmt: skip
    batch = prepared.val.batch(list(range(min(2, len(prepared.val)))), prepared.teacher.tokenizer,
                               torch.device("cpu"))  # fmt: skip
    ids, mask = batch["input_ids"], batch["attention_mask"]
    try:
        torch.onnx.export(
            module, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
            output_names=["output"], dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                          "attention_mask": {0: "batch", 1: "sequence"}, "output": {0: "batch"}},
        )  # fmt: skip
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (onnx_out,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            expected = module(ids, mask).float()
        recorder.onnx_max_abs_diff = float((torch.from_numpy(onnx_out) - expected).abs().max())
    except Exception as exc:
        recorder.event("onnx_export_failed", f"student.onnx was not written: {shorten(exc)}")
        path.unlink(missing_ok=True)
        return {}
    finally:
        prepared.student.to(prepared.device)
    return {"student.onnx": path}
