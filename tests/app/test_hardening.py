"""Issue 15's resource, fault and security findings, from the API's side."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import spec
from tests.factories import npz_bytes
from tests.worker.test_npz_headers import npy_header


def _post_file(client: TestClient, headers: dict[str, str], content: bytes) -> dict:
    response = client.post(
        "/v1/files",
        headers=headers,
        data={"purpose": "dataset"},
        files={"file": ("d.npz", content, "application/octet-stream")},
    )
    assert response.status_code == 400, response.text
    return response.json()["error"]


def test_npz_with_a_void_label_array_is_refused_at_upload(
    client: TestClient, headers: dict[str, str]
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", npy_header((4, 2), "<f4") + bytes(32))
        archive.writestr("y.npy", npy_header((4,), "|V16") + bytes(64))
    error = _post_file(client, headers, buffer.getvalue())
    assert "'y'" in error["message"] and "|V16" in error["message"], error


def test_npz_with_a_truncated_array_is_refused_as_truncated(
    client: TestClient, headers: dict[str, str]
) -> None:
    whole = npz_bytes(x=np.zeros((10, 4), np.float32))
    cut = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(whole)) as source, zipfile.ZipFile(cut, "w") as archive:
        archive.writestr("x.npy", source.read("x.npy")[:-40])
    error = _post_file(client, headers, cut.getvalue())
    assert "truncated" in error["message"], error
    half = _post_file(client, headers, whole[: len(whole) // 2])
    assert "truncated" in half["message"], half


@pytest.mark.parametrize(
    "student",
    [
        {"arch": "mlp", "hidden": [65536] * 32},
        {"arch": "cnn", "channels": [4096] * 4, "kernel_size": 31, "layout": "2d"},
    ],
    ids=["mlp", "cnn"],
)
def test_an_oversized_student_is_refused_at_submit(
    client: TestClient, headers: dict[str, str], job_files: dict[str, str], student: dict
) -> None:
    response = client.post("/v1/jobs", headers=headers, json=spec(job_files, student=student))
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "DISTILLERY_MAX_STUDENT_PARAMS" in message and "parameters" in message, message
