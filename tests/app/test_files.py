from __future__ import annotations

import hashlib

import numpy as np
from fastapi.testclient import TestClient

from app.api.responses import LargeFileResponse
from app.config import get_settings
from tests.app.conftest import upload
from tests.factories import npz_bytes, pickle_bytes, small_dataset


def test_upload_dataset_reports_arrays_and_sha256(client: TestClient, headers: dict) -> None:
    content = small_dataset(samples=30, features=5)
    file = upload(client, headers, "dataset", content, "train.npz")
    assert file["object"] == "file"
    assert file["id"].startswith("file_")
    assert file["purpose"] == "dataset"
    assert file["format"] == "npz"
    assert file["bytes"] == len(content)
    assert file["sha256"] == hashlib.sha256(content).hexdigest()
    assert file["details"]["samples"] == 30
    assert file["details"]["arrays"]["x"] == {"shape": [30, 5], "dtype": "float32"}
    assert file["created_at"].endswith(("Z", "+00:00"))


def test_download_returns_the_same_bytes(client: TestClient, headers: dict) -> None:
    content = small_dataset(seed=3)
    file = upload(client, headers, "dataset", content)
    response = client.get(f"/v1/files/{file['id']}/content", headers=headers)
    assert response.status_code == 200
    assert response.content == content


def test_large_download_and_ranges_return_the_right_bytes(
    client: TestClient, headers: dict
) -> None:
    """Several reads with read-ahead hints, a range across a chunk boundary, and
    a resume from an offset: the bytes are the file's."""
    chunk = LargeFileResponse.chunk_size
    content = small_dataset(samples=3 * chunk // 192 + 999, features=48, seed=4)  # 3+ chunks
    file = upload(client, headers, "dataset", content)
    url = f"/v1/files/{file['id']}/content"
    whole = client.get(url, headers=headers)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert hashlib.sha256(whole.content).digest() == hashlib.sha256(content).digest()
    assert len(content) > 3 * chunk
    start, end = chunk - 10, 2 * chunk + 10
    part = client.get(url, headers={**headers, "Range": f"bytes={start}-{end}"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes {start}-{end}/{len(content)}"
    assert part.content == content[start : end + 1]
    rest = client.get(url, headers={**headers, "Range": f"bytes={start}-"})
    assert rest.content == content[start:]


def test_npz_without_x_is_refused_with_a_clear_message(client: TestClient, headers: dict) -> None:
    content = npz_bytes(features=np.zeros((4, 2)), labels=np.zeros(4))
    response = client.post(
        "/v1/files",
        headers=headers,
        data={"purpose": "dataset"},
        files={"file": ("d.npz", content)},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_file"
    assert "no array named 'x'" in error["message"]
    assert "features, labels" in error["message"]


def test_object_arrays_are_refused_without_unpickling(client: TestClient, headers: dict) -> None:
    content = npz_bytes(x=np.array([{"a": 1}, {"b": 2}], dtype=object))
    response = client.post(
        "/v1/files",
        headers=headers,
        data={"purpose": "dataset"},
        files={"file": ("d.npz", content)},
    )
    assert response.status_code == 400
    assert "never unpickles" in response.json()["error"]["message"]


def test_label_count_must_match_samples(client: TestClient, headers: dict) -> None:
    content = npz_bytes(x=np.zeros((5, 2), np.float32), y=np.zeros(4, np.int64))
    response = client.post(
        "/v1/files",
        headers=headers,
        data={"purpose": "dataset"},
        files={"file": ("d.npz", content)},
    )
    assert response.status_code == 400
    assert "5 samples" in response.json()["error"]["message"]


def test_dataset_must_be_a_known_format(client: TestClient, headers: dict) -> None:
    response = client.post(
        "/v1/files",
        headers=headers,
        data={"purpose": "dataset"},
        files={"file": ("d.npz", b"\x00\x01garbage" * 50)},
    )
    assert response.status_code == 400
    assert "NPZ" in response.json()["error"]["message"]


def test_pickled_teacher_is_stored_but_flagged(client: TestClient, headers: dict) -> None:
    file = upload(client, headers, "teacher", pickle_bytes({"weights": [1, 2, 3]}), "t.pkl")
    assert file["format"] == "pickle"
    assert "never unpickles" in file["details"]["warning"]


def test_unknown_or_missing_purpose_is_400(client: TestClient, headers: dict) -> None:
    bad = client.post(
        "/v1/files", headers=headers, data={"purpose": "weights"}, files={"file": ("a", b"123")}
    )
    assert bad.status_code == 400
    assert "teacher, student, dataset" in bad.json()["error"]["message"]
    missing = client.post("/v1/files", headers=headers, files={"file": ("a", b"123")})
    assert missing.status_code == 400
    assert "purpose" in missing.json()["error"]["message"]


def test_not_multipart_is_400(client: TestClient, headers: dict) -> None:
    response = client.post("/v1/files", headers=headers, json={"purpose": "teacher"})
    assert response.status_code == 400
    assert "multipart/form-data" in response.json()["error"]["message"]


def test_upload_over_the_cap_is_413_and_leaves_nothing(client: TestClient, headers: dict) -> None:
    settings = get_settings()
    limit = settings.max_upload_bytes
    settings.max_upload_bytes = 1000
    try:
        response = client.post(
            "/v1/files",
            headers=headers,
            data={"purpose": "teacher"},
            files={"file": ("big.bin", b"\x00" * 5000)},
        )
    finally:
        settings.max_upload_bytes = limit
    assert response.status_code == 413
    assert "1000 bytes" in response.json()["error"]["message"]
    tmp = settings.resolved_data_dir / "tmp"
    assert not any(tmp.glob("upload-*"))


def test_list_get_delete(client: TestClient, headers: dict) -> None:
    first = upload(client, headers, "dataset", small_dataset(seed=1))
    second = upload(client, headers, "teacher", b"model bytes")
    listed = client.get("/v1/files", headers=headers).json()
    assert [f["id"] for f in listed["data"]] == [second["id"], first["id"]]
    only = client.get("/v1/files?purpose=teacher", headers=headers).json()
    assert [f["id"] for f in only["data"]] == [second["id"]]
    assert client.get(f"/v1/files/{first['id']}", headers=headers).json() == first
    deleted = client.delete(f"/v1/files/{first['id']}", headers=headers)
    assert deleted.json() == {"id": first["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{first['id']}", headers=headers).status_code == 404


def test_file_in_use_by_an_unfinished_job_cannot_be_deleted(
    client: TestClient, headers: dict, job_files: dict
) -> None:
    from tests.app.conftest import spec

    assert client.post("/v1/jobs", headers=headers, json=spec(job_files)).status_code == 201
    response = client.delete(f"/v1/files/{job_files['dataset']}", headers=headers)
    assert response.status_code == 409
    assert "has not finished" in response.json()["error"]["message"]


def test_other_tenants_files_are_404_everywhere(
    client: TestClient, headers: dict, other_headers: dict
) -> None:
    file = upload(client, headers, "dataset", small_dataset())
    for method, path in (
        ("GET", f"/v1/files/{file['id']}"),
        ("GET", f"/v1/files/{file['id']}/content"),
        ("DELETE", f"/v1/files/{file['id']}"),
    ):
        response = client.request(method, path, headers=other_headers)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"
    assert client.get("/v1/files", headers=other_headers).json()["data"] == []


def test_upload_idempotency_key_replays_or_conflicts(client: TestClient, headers: dict) -> None:
    keyed = {**headers, "Idempotency-Key": "upload-1"}
    content = small_dataset(seed=7)
    first = client.post(
        "/v1/files", headers=keyed, data={"purpose": "dataset"}, files={"file": ("d.npz", content)}
    )
    again = client.post(
        "/v1/files", headers=keyed, data={"purpose": "dataset"}, files={"file": ("d.npz", content)}
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    other = client.post(
        "/v1/files",
        headers=keyed,
        data={"purpose": "dataset"},
        files={"file": ("d.npz", small_dataset(seed=8))},
    )
    assert other.status_code == 409
    assert len(client.get("/v1/files", headers=headers).json()["data"]) == 1


def test_list_files_by_sha256(client: TestClient, headers: dict) -> None:
    content = small_dataset(seed=9)
    file = upload(client, headers, "dataset", content)
    upload(client, headers, "dataset", small_dataset(seed=10))
    digest = hashlib.sha256(content).hexdigest()
    found = client.get(f"/v1/files?sha256={digest}", headers=headers).json()["data"]
    assert [f["id"] for f in found] == [file["id"]]
    assert client.get("/v1/files?sha256=xyz", headers=headers).status_code == 422


def test_non_ascii_filenames_survive(client: TestClient, headers: dict) -> None:
    file = upload(client, headers, "teacher", b"weights", "modèle-Ā.pt")
    assert file["filename"] == "modèle-Ā.pt"


def test_path_parts_of_a_filename_are_dropped(client: TestClient, headers: dict) -> None:
    file = upload(client, headers, "teacher", b"weights", "../../etc/evil.pt")
    assert file["filename"] == "evil.pt"
