"""Transformer distillation through the API: a tiny BERT classifier, a sentence-transformers
BERT and a GPT-2, each built in the test, uploaded as ZIPs with JSONL data, distilled to
`succeeded`, and the student ZIP loaded back with transformers, offline."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Api
from tests.worker.kd.hf.factories import bert_dir, gpt2_dir, write_jsonl, zip_dir

pytestmark = pytest.mark.e2e

CASES = [
    ("sequence_classification", {"arch": "from_teacher", "num_layers": 2}),
    ("sentence_embedding", {"arch": "from_teacher", "num_layers": 2}),
    ("causal_lm", {"arch": "from_teacher", "layers": [0, 3]}),
]


@pytest.mark.parametrize(("task", "student"), CASES)
def test_transformer_job_through_the_api(
    embedded: Api, tmp_path: Path, task: str, student: dict[str, Any]
) -> None:
    import transformers

    model = gpt2_dir(tmp_path / "m") if task == "causal_lm" else bert_dir(tmp_path / "m", task)
    teacher = embedded.upload(zip_dir(model, tmp_path / "teacher.zip"), "teacher")
    assert teacher["format"] == "hf_zip" and teacher["details"]["task"] == task
    data_path = write_jsonl(tmp_path / "d.jsonl", 48, labeled=task == "sequence_classification")
    dataset = embedded.upload(data_path, "dataset")
    assert dataset["format"] == "jsonl"
    job = embedded.submit({
        "teacher": {"file_id": teacher["id"]}, "student": student,
        "dataset": {"file_id": dataset["id"], "max_length": 24},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
    })  # fmt: skip
    job = embedded.wait(job["id"], timeout=240)
    assert job["status"] == "succeeded", job
    report = embedded.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["task"] == task and report["size_reduction"] > 0
    response = embedded.get(f"/v1/jobs/{job['id']}/artifacts/student.zip")
    assert response.status_code == 200
    (tmp_path / "student.zip").write_bytes(response.content)
    with zipfile.ZipFile(tmp_path / "student.zip") as archive:
        archive.extractall(tmp_path / "student")
    auto = {
        "sequence_classification": transformers.AutoModelForSequenceClassification,
        "sentence_embedding": transformers.AutoModel,
        "causal_lm": transformers.AutoModelForCausalLM,
    }[task]
    loaded = auto.from_pretrained(str(tmp_path / "student"), local_files_only=True)
    assert loaded.config.num_hidden_layers == 2
    transformers.AutoTokenizer.from_pretrained(str(tmp_path / "student"), local_files_only=True)


def test_sequence_method_with_an_uploaded_student_through_the_api(
    embedded: Api, tmp_path: Path
) -> None:
    """method sequence, an hf_file student: the teacher's generations are an artifact of
    the job, beside the student ZIP and the decoder with past key values."""
    teacher = embedded.upload(zip_dir(gpt2_dir(tmp_path / "m"), tmp_path / "t.zip"), "teacher")
    student_dir = gpt2_dir(tmp_path / "s", layers=2, seed=1)
    student = embedded.upload(zip_dir(student_dir, tmp_path / "s.zip"), "student")
    assert student["format"] == "hf_zip" and student["details"]["num_layers"] == 2
    dataset = embedded.upload(write_jsonl(tmp_path / "d.jsonl", 32, labeled=False), "dataset")
    job = embedded.submit({
        "teacher": {"file_id": teacher["id"]},
        "student": {"arch": "hf_file", "file_id": student["id"]},
        "dataset": {"file_id": dataset["id"], "max_length": 24},
        "distillation": {"method": "sequence", "generation": {"max_new_tokens": 8}},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
    })  # fmt: skip
    job = embedded.wait(job["id"], timeout=240)
    assert job["status"] == "succeeded", job
    names = {a["name"] for a in embedded.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]}
    assert {"generations.jsonl", "student.zip", "student_with_past.onnx"} <= names
    report = embedded.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["method"] == "sequence" and report["speculative"]["identical"] is True


def test_a_causal_lm_job_with_prompts_an_eval_file_and_top_k(embedded: Api, tmp_path: Path) -> None:
    """Prompt/completion rows, a separate evaluation upload (dataset.eval_file_id) and
    method top_k, through the API: the report is measured on the evaluation file, with
    perplexities, samples and the cache's bytes per token."""
    import json

    from tests.worker.kd.hf.factories import sentences

    def prompts(path: Path, n: int, seed: int) -> Path:
        rows = []
        for text, _ in sentences(n, seed):
            first, _, rest = text.partition(" ")
            rows.append({"prompt": first, "completion": " " + rest} if rest else {"text": text})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    teacher = embedded.upload(zip_dir(gpt2_dir(tmp_path / "m"), tmp_path / "t.zip"), "teacher")
    dataset = embedded.upload(prompts(tmp_path / "d.jsonl", 40, 0), "dataset")
    evaluation = embedded.upload(prompts(tmp_path / "e.jsonl", 12, 1), "dataset")
    assert dataset["details"]["rows"]["prompt"] > 0
    job = embedded.submit({
        "teacher": {"file_id": teacher["id"]},
        "student": {"arch": "hf", "config": {"n_layer": 1}},
        "dataset": {"file_id": dataset["id"], "eval_file_id": evaluation["id"], "max_length": 24},
        "distillation": {"method": "top_k", "top_k": 4},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
        "baseline": True,
    })  # fmt: skip
    job = embedded.wait(job["id"], timeout=240)
    assert job["status"] == "succeeded", job
    report = embedded.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["evaluation"]["split"] == "eval_file" and report["evaluation"]["samples"] == 12
    assert report["method"] == "top_k" and len(report["samples"]) == 5
    assert set(report["perplexity"]) == {"teacher", "student", "baseline"}
    cache = report["teacher_cache"]
    assert cache["top_k"] == 4 and cache["bytes_per_token"] < cache["dense_bytes_per_token"]
