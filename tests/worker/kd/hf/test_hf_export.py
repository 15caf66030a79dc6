"""student.onnx of a transformer student: the graph matches the PyTorch student on batches
of other sizes, lengths and padding than the ones it was exported and checked with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from tests.worker.kd.hf.factories import bert_dir, gpt2_dir, write_jsonl, zip_dir
from worker.kd.engine import prepare
from worker.kd.exports.onnx import compare, export_checked, export_graph
from worker.kd.exports.transformer import (
    TRACE_OPSET,
    Batch,
    export_onnx,
    export_with_past,
    random_batch,
    signature,
)
from worker.kd.hf.measure import TaskModule
from worker.kd.spec import JobSpec
from worker.kd.tasks.transformer_job import HFPrepared
from worker.kd.training.reporting import MemoryReporter, RecordingReporter

STUDENTS = {
    "sequence_classification": {"arch": "from_teacher", "num_layers": 2},
    "sentence_embedding": {"arch": "from_teacher", "layers": [1, 3]},
    "causal_lm": {"arch": "hf", "config": {"n_layer": 2}},
}


def prepared_job(tmp_path: Path, task: str) -> HFPrepared:
    model = gpt2_dir(tmp_path / "m") if task == "causal_lm" else bert_dir(tmp_path / "m", task)
    data = write_jsonl(tmp_path / "d.jsonl", 40, labeled=task == "sequence_classification")
    spec = JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": STUDENTS[task],
        "dataset": {"file_id": "d", "max_length": 24}, "training": {"epochs": 1},
    })  # fmt: skip
    prepared = prepare(spec, zip_dir(model, tmp_path / "t.zip"), data)
    assert isinstance(prepared, HFPrepared)
    return prepared


def unseen_batches(vocab: int, pad: int) -> list[Batch]:
    """Sizes and lengths the export never saw; each row its own length, padded on the right
    or (every third row) on the left."""
    generator = torch.Generator().manual_seed(123)
    batches = []
    for rows, length in [(4, 7), (6, 21), (1, 3), (9, 16)]:
        ids = torch.randint(vocab, (rows, length), generator=generator)  # (B, T)
        mask = torch.zeros(rows, length, dtype=torch.long)  # (B, T)
        for row in range(rows):
            real = int(torch.randint(1, length + 1, (1,), generator=generator))
            if row % 3 == 2:
                mask[row, length - real :] = 1
            else:
                mask[row, :real] = 1
        batches.append((ids.masked_fill(mask == 0, pad), mask))
    return batches


@pytest.mark.parametrize("task", list(STUDENTS))
def test_student_onnx_matches_pytorch_on_unseen_batches(tmp_path: Path, task: str) -> None:
    prepared = prepared_job(tmp_path, task)
    prepared.student.train()  # as training leaves it: the export must not depend on that
    recorder = RecordingReporter(MemoryReporter())
    artifacts = export_onnx(prepared, tmp_path, recorder)

    assert recorder.onnx_max_abs_diff is not None and recorder.onnx_max_abs_diff < 1e-4
    assert prepared.student.training  # its mode is given back
    session = onnxruntime.InferenceSession(str(artifacts["student.onnx"]))
    assert [i.shape for i in session.get_inputs()] == [["batch", "sequence"]] * 2
    student: Any = prepared.student
    module = TaskModule(student, task, prepared.teacher.layout).eval()
    pad = int(prepared.teacher.tokenizer.pad_token_id)
    for ids, mask in unseen_batches(int(student.config.vocab_size), pad):
        (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            expected = module(ids, mask).numpy()
        if task == "causal_lm":  # logits of real tokens; a padded position's mean nothing
            got, expected = got[mask.bool().numpy()], expected[mask.bool().numpy()]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4


class ReadsTheMaskAsANumber(nn.Module):
    """Divides by the batch's token count taken out as a Python number, which tracing
    records as a constant of the export batch."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        total = (input_ids * attention_mask).sum(dim=1, keepdim=True).float()  # (B, 1)
        return total / attention_mask.sum().item()


def test_a_graph_tracing_gets_wrong_is_exported_again_with_torch_export(tmp_path: Path) -> None:
    module = ReadsTheMaskAsANumber().eval()
    generator = torch.Generator().manual_seed(0)
    traced = random_batch(50, 0, 2, 6, generator)
    checks = [traced, random_batch(50, 0, 3, 11, generator)]
    texts = signature(per_token=False)
    export_graph(module, traced, tmp_path / "traced.onnx", texts, dynamo=False)
    assert compare(module, tmp_path / "traced.onnx", checks, texts)[0] > 1.0  # the check sees it

    diff = export_checked(module, traced, checks, tmp_path / "m.onnx", texts)

    assert diff < 1e-4
    opset = {o.domain: o.version for o in onnx.load(str(tmp_path / "m.onnx")).opset_import}
    assert opset[""] != TRACE_OPSET  # written by the torch.export-based exporter
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["m.onnx", "traced.onnx"]


def test_causal_student_with_past_decodes_as_pytorch_does(tmp_path: Path) -> None:
    """student_with_past.onnx: a left-padded batch of two prompts with an empty past, then
    one token a step from the returned presents, against the PyTorch student on the whole
    sequences (positions counted over real tokens)."""
    prepared = prepared_job(tmp_path, "causal_lm")
    recorder = RecordingReporter(MemoryReporter())
    export_onnx(prepared, tmp_path, recorder)
    artifacts, info = export_with_past(prepared, tmp_path, recorder)

    assert info["past_key_values"] is True and info["max_abs_diff"] < 1e-4
    session = onnxruntime.InferenceSession(str(artifacts["student_with_past.onnx"]))
    assert session.get_modelmeta().custom_metadata_map["past_key_values"] == "true"
    plain = onnxruntime.InferenceSession(str(tmp_path / "student.onnx"))
    assert plain.get_modelmeta().custom_metadata_map["with_past"] == "student_with_past.onnx"
    student: Any = prepared.student.eval()
    ids = torch.tensor([[0, 0, 5, 9, 14], [3, 8, 2, 7, 11]])  # (B, T): row 0 left-padded
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    names = [i.name for i in session.get_inputs()][2:]
    heads, head_dim = info["heads"], info["head_dim"]
    past = [np.zeros((2, heads, 0, head_dim), dtype=np.float32) for _ in names]
    step = ids
    for _ in range(3):
        feed = {"input_ids": step.numpy(), "attention_mask": mask.numpy(),
                **dict(zip(names, past, strict=True))}  # fmt: skip
        logits, *past = session.run(None, feed)
        with torch.no_grad():
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            expected = student(input_ids=ids, attention_mask=mask, position_ids=positions,
                               use_cache=False).logits[:, -1]  # fmt: skip
        assert np.abs(logits[:, -1] - expected.numpy()).max() < 1e-4
        step = torch.from_numpy(logits[:, -1].argmax(-1, keepdims=True))  # (B, 1)
        ids, mask = (
            torch.cat([ids, step], 1),
            torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
        )
