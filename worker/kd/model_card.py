"""The model card (README.md beside the student): what it is, how it was made, what it kept."""

from __future__ import annotations

import json
from typing import Any


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.1%}"


def _num(value: float | None, fmt: str = "{:.4f}") -> str:
    return "not measured" if value is None else fmt.format(value)


def model_card(report: dict[str, Any], teacher_name: str, dataset_name: str) -> str:
    teacher, student = report["teacher"], report["student"]
    validation = report["validation"]
    labels = (
        "the dataset's labels"
        if validation["labels"] == "dataset"
        else "the teacher's predictions (the dataset has no labels)"
    )
    gain = report.get("kd_gain")
    gain_line = (
        f"- KD gain over the same student trained without a teacher: {gain:+.4f}"
        if gain is not None
        else "- KD gain: not measured (no baseline was trained in this job)"
    )
    rows = [
        ("accuracy", _num(teacher["accuracy"]), _num(student["accuracy"])),
        ("parameters", f"{teacher['parameters']:,}", f"{student['parameters']:,}"),
        (
            "serialized bytes",
            f"{teacher['serialized_bytes']:,}",
            f"{student['serialized_bytes']:,}",
        ),
        (
            "latency, batch 1 (ms)",
            _num(teacher["latency_ms_batch1"], "{:.3f}"),
            _num(student["latency_ms_batch1"], "{:.3f}"),
        ),
    ]
    table = "\n".join(f"| {name} | {t} | {s} |" for name, t, s in rows)
    return f"""# Distilled student: {student["arch"]}

A `{student["arch"]}` student distilled from the teacher `{teacher_name}` on `{dataset_name}`
by Distillery. Inputs: samples of shape {tuple(report["input_shape"])}, float32;
outputs: {report["num_classes"]} logits.

## What it kept

Measured on {validation["samples"]} validation samples ({validation["source"]}) against
{labels}, on the worker's {report["device"]}:

| | teacher | student |
| --- | --- | --- |
{table}

- Quality retained (student / teacher accuracy): {_pct(report["quality_retained"])}
- Size reduction (parameters): {_pct(report["size_reduction"])}
- Speed-up at batch 1: {_num(report["speedup"], "{:.2f}x")}
- Top-1 agreement with the teacher: {_num(report["agreement"])}
{gain_line}

![training curves](curves.png)

## Use it

```python
import torch
student = torch.jit.load("student.pt").eval()
logits = student(x)  # x: (batch, {", ".join(str(d) for d in report["input_shape"])}) float32
```

Or rebuild it from `config.json` and `student.safetensors` (no pickle involved) with
`worker.kd.export.load_student("config.json", "student.safetensors")`.

## How it was trained

```json
{json.dumps(report["recipe"], indent=2)}
```

{report["epochs"]} epochs, {report["steps"]} steps, {report["train_seconds"]} s of training.
"""
