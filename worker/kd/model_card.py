"""The model card (README.md beside the student): what it is, how it was made, what it kept."""

from __future__ import annotations

import json
from typing import Any


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.1%}"


def _num(value: float | None, fmt: str = "{:.4f}") -> str:
    return "n/a" if value is None else fmt.format(value)


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
    models = [("teacher", teacher), ("student", student)]
    if report.get("baseline"):
        models.append(("baseline (no teacher)", report["baseline"]))
    rows = [
        ("accuracy", "accuracy", "{:.4f}"),
        ("top-5 accuracy", "top5_accuracy", "{:.4f}"),
        ("parameters", "parameters", "{:,}"),
        ("serialized bytes", "serialized_bytes", "{:,}"),
        ("latency, batch 1 (ms)", "latency_ms_batch1", "{:.3f}"),
        ("latency, batch 64 (ms)", "latency_ms_batch64", "{:.3f}"),
        ("throughput (samples/s)", "throughput_per_s", "{:,.0f}"),
    ]
    header = "| | " + " | ".join(name for name, _ in models) + " |\n"
    header += "| --- |" + " --- |" * len(models) + "\n"
    lines = [
        f"| {label} | " + " | ".join(_num(m.get(key), fmt) for _, m in models) + " |"
        for label, key, fmt in rows
        if any(m.get(key) is not None for _, m in models)
    ]
    table = header + "\n".join(lines)
    return f"""# Distilled student: {student["arch"]}

A `{student["arch"]}` student distilled from the teacher `{teacher_name}` on `{dataset_name}`
by Distillery. Inputs: samples of shape {tuple(report["input_shape"])}, float32;
outputs: {report["num_classes"]} logits.

## What it kept

Measured on {validation["samples"]} validation samples ({validation["source"]}) against
{labels}, on the worker's {report["device"]}:

{table}

- Quality retained (student / teacher accuracy): {_pct(report["quality_retained"])}
- Size reduction (parameters): {_pct(report["size_reduction"])}
- Speed-up at batch 1: {_num(report["speedup"], "{:.2f}x")}
- Top-1 agreement with the teacher: {_num(report["agreement"])}
- ONNX export, max abs difference from torch: {_num(report.get("onnx_max_abs_diff"), "{:.2e}")}
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
