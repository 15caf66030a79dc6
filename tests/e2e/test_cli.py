"""The CLI as a newcomer uses it against `distillery up`: submit a YAML spec naming local
files, watch it to the end, read the report, download the student."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Api, clean_env, student_accuracy

pytestmark = pytest.mark.e2e


def distillery(
    api: Api, *args: str, config: bool = False, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; with `config`, URL and key come from the file `distillery up` wrote."""
    assert api.root is not None
    env = clean_env(DISTILLERY_CLIENT_CONFIG=str(api.root / "client.json"))
    env["PYTHONPATH"] = str(ROOT)  # this checkout's app, also when run from another folder
    flags = [] if config else ["--url", api.base, "--key", api.key]
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args, *flags],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_submit_watch_report_download(
    embedded: Api, digits: dict[str, Path], tmp_path: Path
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"teacher: {{path: {digits['teacher']}}}\n"
        f"dataset: {{path: {digits['dataset']}}}\n"
        "student: {arch: cnn, channels: [8, 16], hidden: 32}\n"
        "training: {epochs: 4, learning_rate: 0.01, seed: 0}\n"
    )
    submitted = distillery(embedded, "submit", str(spec), "--watch", config=True)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert job_id.startswith("job_")
    assert "succeeded" in submitted.stderr and "student accuracy" in submitted.stderr

    again = distillery(embedded, "submit", str(spec), "--json")
    assert again.returncode == 0, again.stderr
    reused = json.loads(again.stdout)["spec"]
    first = embedded.get(f"/v1/jobs/{job_id}").json()["spec"]
    assert reused["teacher"] == first["teacher"] and reused["dataset"] == first["dataset"]
    distillery(embedded, "cancel", json.loads(again.stdout)["id"])

    report = json.loads(distillery(embedded, "report", job_id, "--json").stdout)
    table = distillery(embedded, "report", job_id).stdout
    assert f"{report['student']['accuracy']:.4f}" in table
    assert "not measured" in table  # no baseline, so no KD gain is claimed

    listed = json.loads(distillery(embedded, "jobs", "--json").stdout)
    assert job_id in [job["id"] for job in listed]

    fetched = distillery(embedded, "download", job_id, "--dir", str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    student = tmp_path / "out" / "student.pt"
    assert student_accuracy(student, digits["dataset"]) == report["student"]["accuracy"]
    assert (tmp_path / "out" / "report.json").exists()

    # Without --dir: ./JOB_ID/. Into a folder holding other files of the same names: refused.
    default = distillery(embedded, "download", job_id, "--name", "report.json", cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    assert (tmp_path / job_id / "report.json").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "student.pt").write_bytes(b"another model")
    refused = distillery(embedded, "download", job_id, "--dir", str(other))
    assert refused.returncode == 2
    assert "already holds student.pt" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (other / "student.pt").read_bytes() == b"another model"
    forced = distillery(embedded, "download", job_id, "--dir", str(other), "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert (
        student_accuracy(other / "student.pt", digits["dataset"]) == report["student"]["accuracy"]
    )


def test_watch_exits_non_zero_and_prints_the_error(
    embedded: Api, digits: dict[str, Path], tmp_path: Path
) -> None:
    garbage = tmp_path / "teacher.pt"
    garbage.write_bytes(b"\x00not a model" * 100)
    spec = tmp_path / "job.json"
    spec.write_text(
        json.dumps(
            {
                "teacher": {"path": str(garbage)},
                "dataset": {"path": str(digits["dataset"])},
                "student": {"arch": "mlp"},
                "training": {"epochs": 1},
            }
        )
    )
    result = distillery(embedded, "submit", str(spec), "--watch")
    assert result.returncode == 1
    assert "invalid_teacher" in result.stderr


def test_submit_reports_api_errors_readably(embedded: Api, tmp_path: Path) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(
        json.dumps(
            {
                "teacher": {"file_id": "file_nope"},
                "dataset": {"file_id": "file_nope"},
                "student": {"arch": "vit"},
            }
        )
    )
    result = distillery(embedded, "submit", str(spec))
    assert result.returncode == 1
    assert "unknown student arch 'vit'" in result.stderr

    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "teacher: {file_id: file_nope}\ndataset: {file_id: file_nope}\n"
        "student: {arch: mlp}\ntraining: {epoch: 3}\n"
    )
    result = distillery(embedded, "submit", str(typo))
    assert result.returncode == 1
    assert "training.epoch: unknown field; did you mean 'epochs'?" in result.stderr


def test_malformed_yaml_is_one_line_naming_file_line_and_column(
    embedded: Api, tmp_path: Path
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("teacher: {file_id: file_x}\nstudent: [mlp\ntraining: {epochs: 3}\n")
    result = distillery(embedded, "submit", str(spec))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{spec}:3:" in lines[0] and "YAML" in lines[0]


def test_missing_key_says_how_to_get_one(tmp_path: Path) -> None:
    env = clean_env(DISTILLERY_CLIENT_CONFIG=str(tmp_path / "none.json"))
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "DISTILLERY_API_KEY" in result.stderr
