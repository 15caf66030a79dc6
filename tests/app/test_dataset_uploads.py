"""Dataset uploads in each format (NPZ, CSV, image ZIP), sniffed by content, checked cheaply."""

from __future__ import annotations

import io
import stat
import zipfile

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from tests.app.conftest import upload
from tests.factories import npz_bytes, small_dataset


def image_bytes(fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), (200, 30, 30)).save(buffer, fmt)
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def refused(client: TestClient, headers: dict, content: bytes, filename: str = "d.bin") -> str:
    """The message of a 400 invalid_file for this dataset upload."""
    response = client.post(
        "/v1/files",
        headers=headers,
        data={"purpose": "dataset"},
        files={"file": (filename, content)},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_file"
    return str(error["message"])


def test_csv_reports_columns_and_rows(client: TestClient, headers: dict) -> None:
    content = b"f1,f2,label\n" + b"".join(b"%d,%d,%d\n" % (i, 2 * i, i % 3) for i in range(50))
    file = upload(client, headers, "dataset", content, "train.csv")
    assert file["format"] == "csv"
    assert file["details"] == {
        "format": "csv",
        "columns": ["f1", "f2", "label"],
        "num_columns": 3,
        "has_label_column": True,
        "text_columns": {},
        "rows": 50,
        "rows_exact": True,
        "rows_checked": 50,
    }


def test_a_long_csv_is_sampled_and_its_rows_estimated(client: TestClient, headers: dict) -> None:
    content = b"a,b\n" + b"".join(b"%d.25,%d.5\n" % (i % 100, i % 10) for i in range(5000))
    details = upload(client, headers, "dataset", content)["details"]
    assert (details["rows_exact"], details["rows_checked"]) == (False, 1000)
    assert 4500 < details["rows"] < 5500 and details["has_label_column"] is False


def test_csv_text_column_is_reported_as_the_label(client: TestClient, headers: dict) -> None:
    content = b"f1,species\n1,setosa\n2,virginica\n3,setosa\n"
    details = upload(client, headers, "dataset", content)["details"]
    assert details["text_columns"] == {"species": "'setosa' on line 2"}
    assert "dataset.label_column='species'" in details["warning"]
    named = upload(client, headers, "dataset", b"f1,label\n1,cat\n2,dog\n")["details"]
    assert "warning" not in named and named["text_columns"] == {"label": "'cat' on line 2"}


def test_bad_csvs_are_refused_with_the_reason(client: TestClient, headers: dict) -> None:
    cases = {
        b"f1,kind,label\n1,a,b\n2,c,d\n": "2 columns that are not numeric ('kind' has 'a' on",
        b"f1,f2\n1,2\n3,\n": "Line 3 of the CSV: column 'f2' is empty",
        b"f1,f2\n1,2\n3,4,5\n": "Line 3 of the CSV has 3 values but the header has 2 columns",
        b"1,2\n3,4\n": "is numbers, not a header",
        b"f1,f2\n": "a header but no data rows",
        b"f1,f2\n1,2\n": "1 data row; at least 2",
    }
    for content, message in cases.items():
        assert message in refused(client, headers, content), content


def test_image_zip_reports_classes(client: TestClient, headers: dict) -> None:
    entries = {f"pets/cats/{i}.png": image_bytes() for i in range(3)}
    entries |= {f"pets/dogs/{i}.JPG": image_bytes("JPEG") for i in range(2)}
    entries["pets/README.txt"] = b"two classes"
    file = upload(client, headers, "dataset", zip_bytes(entries), "pets.zip")
    assert file["format"] == "image_zip"
    assert file["details"] == {
        "format": "image_zip",
        "images": 5,
        "labeled": True,
        "num_classes": 2,
        "classes": ["cats", "dogs"],
        "images_per_class": {"cats": 3, "dogs": 2},
        "ignored_files": 1,
    }


def test_images_without_folders_are_an_unlabeled_set(client: TestClient, headers: dict) -> None:
    content = zip_bytes({f"{i}.png": image_bytes() for i in range(4)})
    details = upload(client, headers, "dataset", content)["details"]
    assert (details["labeled"], details["images"], details["classes"]) == (False, 4, [])


def test_unsafe_or_imageless_zips_are_refused(client: TestClient, headers: dict) -> None:
    ok = {"cats/1.png": image_bytes()}
    escape = zip_bytes({**ok, "../evil.png": image_bytes()})
    assert "'../evil.png' points outside the archive" in refused(client, headers, escape)
    link = zip_bytes(ok, symlink="dogs/2.png")
    assert "'dogs/2.png' is a symbolic link" in refused(client, headers, link)
    docs = zip_bytes({"notes/a.txt": b"hello"})
    assert "no PNG or JPEG images (found 'notes/a.txt')" in refused(client, headers, docs)
    fake = zip_bytes({**ok, "dogs/2.png": b"this is text"})
    assert "'dogs/2.png' in the ZIP is not a PNG or JPEG image" in refused(client, headers, fake)


def test_unknown_bytes_are_refused_listing_the_formats(client: TestClient, headers: dict) -> None:
    message = refused(client, headers, bytes(range(256)) * 8, "data.csv")
    assert "an NPZ of arrays (np.savez), a CSV file with a header row, or a ZIP of image" in message
    assert "looks like 'unknown'" in message
    single = io.BytesIO()
    np.save(single, np.zeros((3, 2)))
    assert "save x and y together with np.savez" in refused(client, headers, single.getvalue())


def test_the_format_comes_from_the_content_not_the_name(client: TestClient, headers: dict) -> None:
    npz = upload(client, headers, "dataset", small_dataset(), "looks.csv")
    assert (npz["format"], npz["details"]["format"]) == ("npz", "npz")
    csv = upload(client, headers, "dataset", b"a,b\n1,2\n3,4\n", "looks.npz")
    assert csv["format"] == "csv"
    images = upload(client, headers, "dataset", zip_bytes({"a/1.png": image_bytes()}), "x.npz")
    assert images["format"] == "image_zip"


def test_npz_checks_are_unchanged(client: TestClient, headers: dict) -> None:
    message = refused(client, headers, npz_bytes(features=np.zeros((4, 2))))
    assert "no array named 'x'" in message


def test_teacher_uploads_are_not_held_to_dataset_rules(client: TestClient, headers: dict) -> None:
    assert upload(client, headers, "teacher", b"model bytes")["format"] == "unknown"
    assert upload(client, headers, "teacher", b"a,b\n1,2\n")["details"] == {}


def test_prompt_and_chat_rows_are_accepted_and_bad_rows_named(
    client: TestClient, headers: dict
) -> None:
    """Causal-LM rows: prompt (+ completion) and chat messages pass the upload check; a
    malformed row is refused naming its line and what to fix."""
    rows = (
        b'{"prompt": "Q: 2+2?", "completion": " 4"}\n'
        b'{"messages": [{"role": "user", "content": "hi"}, '
        b'{"role": "assistant", "content": "hello"}]}\n'
        b'{"text": "plain text"}\n'
    )
    details = upload(client, headers, "dataset", rows, "d.jsonl")["details"]
    assert details["rows"] == {"text": 1, "prompt": 1, "messages": 1}
    assert details["completions"] == 2
    bad = b'{"prompt": "a"}\n{"messages": [{"role": "bot", "content": "x"}]}\n'
    message = refused(client, headers, bad, "d.jsonl")
    assert message.startswith("Line 2, messages[0]: 'role' must be one of"), message
