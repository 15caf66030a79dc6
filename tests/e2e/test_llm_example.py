"""The LLM example (examples/llm), end to end with its own functions and the smallest
settings that still work: a teacher trained by make_example.py, its job spec (method
logits, baseline), through the API to `succeeded`, the report's LM figures, and the
downloaded student completing prompts with check_student.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, Api

pytestmark = pytest.mark.e2e


def example_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"llm_example_{name}", ROOT / "examples" / "llm" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_llm_example_end_to_end(embedded: Api, tmp_path: Path) -> None:
    make, check = example_module("make_example"), example_module("check_student")
    example = make.make(tmp_path / "example", lines=600, steps=40, transfer=48, epochs=1)
    rows = [json.loads(line) for line in example.train.read_text().splitlines()]
    assert len(rows) == 48 and all(set(row) == {"text"} for row in rows)
    prompts = [json.loads(line) for line in example.prompts.read_text().splitlines()]
    assert all(
        p["prompt"] + p["completion"] == r["text"] for p, r in zip(prompts, rows, strict=True)
    )

    teacher = embedded.upload(example.teacher, "teacher")
    assert teacher["format"] == "hf_zip" and teacher["details"]["task"] == "causal_lm"
    dataset = embedded.upload(example.train, "dataset")
    spec: dict[str, Any] = make.job_spec("logits", epochs=1)
    assert spec["teacher"] == {"path": "teacher.zip"} and spec["baseline"] is True
    spec["teacher"] = {"file_id": teacher["id"]}
    spec["dataset"] = {"file_id": dataset["id"], "max_length": spec["dataset"]["max_length"]}
    job = embedded.wait(embedded.submit(spec)["id"], timeout=600)
    assert job["status"] == "succeeded", job

    report = embedded.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["task"] == "causal_lm" and report["method"] == "logits"
    assert report["speculative"]["identical"] is True
    assert 0.0 <= report["speculative"]["acceptance_rate"] <= 1.0
    assert report["baseline"] is not None and report["kd_gain"] is not None
    response = embedded.get(f"/v1/jobs/{job['id']}/artifacts/student.zip")
    assert response.status_code == 200
    student_zip = tmp_path / "student.zip"
    student_zip.write_bytes(response.content)
    student_dir = check.unzip(student_zip, tmp_path / "student")
    assert check.layers(student_dir) == 2
    completions = check.complete(student_dir, check.PROMPTS[:2], max_new_tokens=4)
    assert len(completions) == 2 and all(isinstance(c, str) for c in completions)
    check.main([str(student_zip), "--teacher", str(example.teacher), "--prompt", "key red so"])
