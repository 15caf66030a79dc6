"""The dashboard in real headless Chromium against `distillery up` (API, worker, SQLite):
sign in, upload and submit from the form, watch the job finish, read the report; cancel."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.web.render import format_percent
from tests.e2e.conftest import (
    ROOT,
    Api,
    Processes,
    clean_env,
    digits_spec,
    free_port,
    wait_ready,
)
from tests.factories import small_dataset

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
JOB_TIMEOUT_MS = 150_000
# Screenshots worth a look by a person (layout): kept after the run, like pytest's tmp dirs.
SHOTS = Path(tempfile.gettempdir()) / "distillery-dashboard-shots"
SHOTS.mkdir(exist_ok=True)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The README's digits example with a briefly trained teacher (about 97% accurate):
    these tests are about the page, not the teacher."""
    out = tmp_path_factory.mktemp("digits")
    script = ROOT / "examples/digits/make_example.py"
    command = [sys.executable, str(script), "--out", str(out), "--epochs", "2"]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return {"teacher": out / "teacher.pt", "dataset": out / "digits.npz"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`distillery up` on a free port; its `local` key is kept in the data dir."""
    root = tmp_path_factory.mktemp("dashboard")
    processes = Processes(root)
    port = free_port()
    data = root / "data"
    up = [sys.executable, "-m", "app.cli", "up", "--data-dir", str(data), "--port", str(port)]
    processes.start("up", up, clean_env())
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, processes)
        yield Api(base, (data / "local-api-key").read_text().strip(), processes)
    finally:
        processes.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard tests need it "
            "(apt-get install -y chromium; `playwright install` is not used)."
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, server: Api) -> Iterator[Page]:
    context = browser.new_context(base_url=server.base, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    errors: list[str] = []
    context.on("weberror", lambda error: errors.append(str(error.error)))
    # Blocked scripts or styles (the pages' CSP) show only here; answered 4xx are expected.
    context.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )
    yield context.new_page()
    context.close()
    assert not errors, f"the page reported errors: {errors}"


def sign_in(page: Page, key: str) -> None:
    page.goto("/")
    page.fill("#key", key)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Jobs")


def test_sign_in_with_a_bad_key_then_a_good_one(page: Page, server: Api) -> None:
    page.goto("/")
    page.fill("#key", "dk_wrong")
    page.click("button[type=submit]")
    expect(page.locator(".alert")).to_have_text("That API key is unknown or was revoked.")
    sign_in(page, server.key)
    cookie = next(c for c in page.context.cookies() if c["name"] == "distillery_key")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.click("text=Sign out")
    expect(page.locator("h1")).to_have_text("Sign in")


def test_distil_digits_from_the_browser(
    page: Page, server: Api, digits: dict[str, Path], tmp_path: Path
) -> None:
    sign_in(page, server.key)
    page.click("nav >> text=New job")
    page.set_input_files("#teacher-upload", digits["teacher"])
    page.set_input_files("#dataset-upload", digits["dataset"])
    page.select_option("#arch", "cnn")
    page.fill("#cnn-channels", "8, 16")
    page.fill("#cnn-hidden", "32")
    page.fill("#epochs", "4")
    page.fill("#learning-rate", "0.01")
    page.click("#submit")
    page.wait_for_url(re.compile(r"/jobs/job_\w+$"))
    job_id = page.url.rsplit("/", 1)[1]

    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#report")).to_be_visible()
    expect(page.locator("#job")).to_have_attribute("data-live", "done")
    report = server.get(f"/v1/jobs/{job_id}/report").json()

    student = page.locator('[data-field="student-accuracy"]')
    expect(student).to_have_text(format_percent(report["student"]["accuracy"]))
    teacher = page.locator('[data-field="teacher-accuracy"]')
    expect(teacher).to_have_text(format_percent(report["teacher"]["accuracy"]))
    expect(page.locator('[data-field="kd-gain"]')).to_have_text("not measured (no baseline)")
    expect(page.locator("#job-progress-text")).to_have_text("100%")

    loss_points = page.locator("#chart-loss polyline.series").get_attribute("points") or ""
    assert len(loss_points.split()) >= 4, loss_points
    accuracy_points = page.locator("#chart-accuracy polyline.series").get_attribute("points")
    assert len((accuracy_points or "").split()) == 4  # one per epoch
    expect(page.locator("#chart-accuracy line.reference")).to_have_count(1)

    links = page.locator("#artifacts a")
    names = {link.get_attribute("download") for link in links.all()}
    assert {"student.pt", "student.safetensors", "report.json", "metrics.csv"} <= names
    href = page.locator('#artifacts a[download="report.json"]').get_attribute("href")
    assert href == f"/v1/jobs/{job_id}/artifacts/report.json"
    downloaded = page.request.get(href)  # the browser's cookie, no bearer header
    assert downloaded.ok and downloaded.json() == report
    expect(page.locator('#events li[data-kind="succeeded"]')).to_have_count(1)
    expect(page.locator("#cancel")).to_be_hidden()

    shot = tmp_path / "job.png"
    page.screenshot(path=shot, full_page=True)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == 1280 and 900 <= height <= 6000, (width, height)
    assert len(png) > 30_000

    page.goto("/")
    row = page.locator("tr", has=page.locator(f'a[href="/jobs/{job_id}"]'))
    expect(row.locator(".badge")).to_have_text("succeeded")
    expect(row.locator("td.num")).to_have_text(format_percent(report["student"]["accuracy"]))
    page.screenshot(path=tmp_path / "jobs.png", full_page=True)


def test_form_checks_values_and_shows_the_apis_message(
    page: Page, server: Api, tmp_path: Path
) -> None:
    sign_in(page, server.key)
    page.goto("/new")
    page.select_option("#teacher-existing", "")
    page.fill("#temperature", "0")
    page.fill("#alpha", "1.5")
    page.fill("#epochs", "0")
    page.fill("#cnn-channels", "8, x")
    page.click("#submit")
    errors = page.locator("#form-errors")
    expect(errors).to_be_visible()
    for message in (
        "Temperature must be greater than 0.",
        "Alpha must be at most 1.",
        "Epochs must be at least 1.",
        "Channels must be whole numbers",
        "Choose a teacher file",
    ):
        expect(errors).to_contain_text(message)
    assert page.url.endswith("/new")
    page.screenshot(path=tmp_path / "new.png", full_page=True)

    bad = tmp_path / "not-a-dataset.npz"
    bad.write_bytes(b"this is not an npz file at all")
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {server.key}"}) as c:
        answer = c.post("/v1/files", data={"purpose": "dataset"}, files={"file": bad.open("rb")})
    assert answer.status_code == 400
    page.fill("#temperature", "4")
    page.fill("#alpha", "0.7")
    page.fill("#epochs", "3")
    page.fill("#cnn-channels", "8")
    page.set_input_files("#teacher-upload", bad)  # any bytes: teachers are checked later
    page.set_input_files("#dataset-upload", bad)
    page.click("#submit")
    expect(errors).to_have_text(answer.json()["error"]["message"])
    assert page.url.endswith("/new")


def test_cancel_button_stops_a_long_job(page: Page, server: Api, digits: dict[str, Path]) -> None:
    teacher = server.upload(digits["teacher"], "teacher")
    dataset = server.upload(digits["dataset"], "dataset")
    job = server.submit(digits_spec(teacher["id"], dataset["id"], epochs=500))
    sign_in(page, server.key)  # lands on the jobs table, which follows the job by itself
    page.evaluate("window.notReloaded = true")
    row = page.locator("tr", has=page.locator(f'a[href="/jobs/{job["id"]}"]'))

    job_page = page.context.new_page()
    job_page.goto(f"/jobs/{job['id']}")
    expect(job_page.locator("#job-status")).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    expect(row.locator(".badge")).to_have_text("running")
    job_page.click("#cancel")
    expect(job_page.locator("#job-status")).to_have_text("cancelled", timeout=60_000)
    expect(job_page.locator("#cancel")).to_be_hidden()
    expect(job_page.locator('#events li[data-kind="cancelled"]')).to_have_count(1)
    expect(job_page.locator("#report")).to_be_hidden()
    assert server.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"

    expect(row.locator(".badge")).to_have_text("cancelled")
    assert page.evaluate("window.notReloaded") is True


def test_failed_job_blank_form_fields_and_the_jobs_table_at_1400px(
    page: Page, server: Api, tmp_path: Path
) -> None:
    """The form sends only the fields filled (blank ones get the server's defaults); a job
    that fails before training says so in its charts, and its legend names no teacher
    line that is not drawn; the jobs table fits a 1400 px window."""
    page.set_viewport_size({"width": 1400, "height": 900})
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"not a model at all" * 50)
    dataset = tmp_path / "data.npz"
    dataset.write_bytes(small_dataset())
    sign_in(page, server.key)
    page.goto("/new")
    for field in ("#temperature", "#alpha", "#epochs", "#batch-size", "#learning-rate", "#seed"):
        expect(page.locator(field)).to_have_value("")
    page.set_input_files("#teacher-upload", teacher)
    page.set_input_files("#dataset-upload", dataset)
    page.select_option("#arch", "mlp")
    page.fill("#mlp-hidden", "512, 256, 128, 64, 32, 16, 8, 4")  # a wide row
    page.fill("#epochs", "2")
    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as sent:
        page.click("#submit")
    body = sent.value.post_data_json
    assert isinstance(body, dict), body
    assert "distillation" not in body and body["training"] == {"epochs": 2}, body
    page.wait_for_url(re.compile(r"/jobs/job_\w+$"))

    expect(page.locator("#job-status")).to_have_text("failed", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job")).to_have_attribute("data-live", "done")
    expect(page.locator("#chart-loss .placeholder")).to_have_text(
        "No data: the job failed before this was measured."
    )
    expect(page.locator("#chart-accuracy .placeholder")).to_contain_text("the job failed")
    expect(page.locator("#legend-teacher")).to_be_hidden()
    default_recipe = "temperature 4.0 · alpha 0.9"
    expect(page.locator("#job-loss")).to_have_text(default_recipe)
    page.screenshot(path=tmp_path / "failed.png", full_page=True)

    page.goto("/")
    table = page.locator("#jobs")
    expect(table).to_be_visible()
    overflow = page.evaluate(
        "() => { const card = document.querySelector('#jobs').parentElement;"
        " return card.scrollWidth - card.clientWidth; }"
    )
    last = page.locator("#jobs thead th").last.bounding_box()
    card = page.locator("#jobs").locator("xpath=..").bounding_box()
    page.screenshot(path=SHOTS / "jobs-1400.png", full_page=True)
    assert overflow <= 0, f"the jobs table overflows its card by {overflow} px"
    assert last and card and last["x"] + last["width"] <= card["x"] + card["width"] + 0.5


@pytest.fixture
def llm_files(server: Api, tmp_path: Path) -> dict[str, str]:
    """Uploaded files for LLM jobs, by role. The form and the API are under test here, not
    the models: the teacher and the student are any bytes (a worker fails such jobs)."""
    model = tmp_path / "model.zip"
    model.write_bytes(b"not a Hugging Face model directory" * 20)
    train = tmp_path / "train.jsonl"
    rows = (f'{{"prompt": "{n} + 1 =", "completion": " {n + 1}"}}\n' for n in range(40))
    train.write_text("".join(rows))
    held_out = tmp_path / "eval.jsonl"
    held_out.write_text("".join(f'{{"text": "{n} + 2 = {n + 2}"}}\n' for n in range(10)))
    npz = tmp_path / "data.npz"
    npz.write_bytes(small_dataset())
    return {
        "teacher": server.upload(model, "teacher")["id"],
        "student": server.upload(model, "student")["id"],
        "dataset": server.upload(train, "dataset")["id"],
        "eval": server.upload(held_out, "dataset")["id"],
        "npz": server.upload(npz, "dataset")["id"],
    }


def submit_form(page: Page) -> tuple[dict[str, object], int]:
    """Click submit; the JSON the form POSTed to /v1/jobs and the API's status."""
    with page.expect_response(
        lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST"
    ) as answered:
        page.click("#submit")
    response = answered.value
    body = response.request.post_data_json
    assert isinstance(body, dict), body
    return body, response.status


def test_llm_job_from_teacher_on_policy_sends_the_chosen_methods_fields(
    page: Page, server: Api, llm_files: dict[str, str], tmp_path: Path
) -> None:
    """from_teacher + on_policy: the form shows the language-model fields and each method's
    own ones only, and POSTs exactly the fields filled for the chosen method."""
    sign_in(page, server.key)
    page.goto("/new")
    lm = page.locator("#transformer-fields")
    expect(lm).to_be_hidden()
    expect(page.locator("#num-layers")).to_be_hidden()
    expect(page.locator("#teacher-hint")).to_have_text(
        "A TorchScript module mapping a batch of inputs to logits."
    )

    page.select_option("#arch", "from_teacher")
    expect(lm).to_be_visible()
    expect(page.locator("#num-layers")).to_be_visible()
    expect(page.locator("#cnn-channels")).to_be_hidden()
    expect(page.locator("#student-existing")).to_be_hidden()  # hf_file's picker
    expect(page.locator("#teacher-hint")).to_contain_text("Hugging Face model directory as a ZIP")
    expect(page.locator("#dataset-hint")).to_contain_text("JSONL texts")
    expect(page.locator("#method")).to_have_value("logits")
    method_fields = ["#top-k", "#lmbda", "#beta", "#max-new-tokens", "#generation-temperature"]
    shown = {
        "logits": set(),
        "top_k": {"#top-k"},
        "sequence": {"#max-new-tokens", "#generation-temperature"},
        "on_policy": {"#lmbda", "#beta", "#max-new-tokens", "#generation-temperature"},
    }
    for method in ("logits", "top_k", "sequence", "on_policy"):
        page.select_option("#method", method)
        for field in method_fields:
            visible = expect(page.locator(field))
            visible.to_be_visible() if field in shown[method] else visible.to_be_hidden()
        if method == "top_k":
            page.fill("#top-k", "8")  # then hidden by on_policy: never sent
    expect(page.locator("#max-length")).to_be_visible()

    page.select_option("#teacher-existing", llm_files["teacher"])
    page.select_option("#dataset-existing", llm_files["dataset"])
    page.select_option("#eval-existing", llm_files["eval"])
    page.fill("#num-layers", "2")
    page.fill("#lmbda", "0.25")
    page.fill("#beta", "0.75")
    page.fill("#max-new-tokens", "16")
    page.fill("#generation-temperature", "0.7")
    page.fill("#max-length", "64")
    page.fill("#epochs", "1")
    page.check("#baseline")
    page.screenshot(path=SHOTS / "new-llm.png", full_page=True)
    body, status = submit_form(page)
    assert body == {
        "teacher": {"file_id": llm_files["teacher"]},
        "student": {"arch": "from_teacher", "num_layers": 2},
        "dataset": {
            "file_id": llm_files["dataset"],
            "max_length": 64,
            "eval_file_id": llm_files["eval"],
        },
        "distillation": {
            "method": "on_policy",
            "lmbda": 0.25,
            "beta": 0.75,
            "generation": {"max_new_tokens": 16, "temperature": 0.7},
        },
        "training": {"epochs": 1},
        "baseline": True,
    }, body
    assert status == 201
    page.wait_for_url(re.compile(r"/jobs/job_\w+$"))
    stored = server.get(f"/v1/jobs/{page.url.rsplit('/', 1)[1]}").json()["spec"]
    assert stored["distillation"]["method"] == "on_policy" and stored["baseline"] is True
    assert stored["dataset"]["eval_file_id"] == llm_files["eval"]


def test_each_llm_method_and_a_tensor_baseline_are_accepted_from_the_form(
    page: Page, server: Api, llm_files: dict[str, str]
) -> None:
    """hf_file + top_k, from_teacher + sequence and + logits (the default: no method sent),
    and a cnn job with a baseline whose hidden language-model fields are not sent."""
    sign_in(page, server.key)
    student = {"arch": "hf_file", "file_id": llm_files["student"]}
    cases: list[tuple[str, str, dict[str, str], dict[str, object]]] = [
        ("hf_file", "top_k", {"#top-k": "8"}, {
            "student": student, "distillation": {"method": "top_k", "top_k": 8}}),
        ("from_teacher", "sequence", {"#num-layers": "1", "#max-new-tokens": "8",
                                      "#generation-temperature": "0"}, {
            "student": {"arch": "from_teacher", "num_layers": 1},
            "distillation": {"method": "sequence",
                             "generation": {"max_new_tokens": 8, "temperature": 0}}}),
        ("from_teacher", "logits", {"#num-layers": "3", "#alpha": "0.5"}, {
            "student": {"arch": "from_teacher", "num_layers": 3},
            "distillation": {"alpha": 0.5}}),
    ]  # fmt: skip
    for arch, method, fields, expected in cases:
        page.goto("/new")
        page.select_option("#arch", arch)
        page.select_option("#method", method)
        page.select_option("#teacher-existing", llm_files["teacher"])
        page.select_option("#dataset-existing", llm_files["dataset"])
        for field, value in fields.items():
            page.fill(field, value)
        body, status = submit_form(page)
        files = {"teacher": {"file_id": llm_files["teacher"]}}
        assert body == {**files, "dataset": {"file_id": llm_files["dataset"]}, **expected}, body
        assert status == 201, (arch, method)
        page.wait_for_url(re.compile(r"/jobs/job_\w+$"))

    page.goto("/new")
    page.select_option("#arch", "from_teacher")
    page.select_option("#method", "on_policy")
    page.fill("#lmbda", "0.5")
    page.fill("#max-length", "32")
    page.select_option("#eval-existing", llm_files["eval"])
    page.select_option("#arch", "cnn")
    expect(page.locator("#transformer-fields")).to_be_hidden()
    page.select_option("#teacher-existing", llm_files["teacher"])
    page.select_option("#dataset-existing", llm_files["npz"])
    page.check("#baseline")
    body, status = submit_form(page)
    assert body == {
        "teacher": {"file_id": llm_files["teacher"]},
        "student": {"arch": "cnn", "channels": [8, 16], "hidden": 32},
        "dataset": {"file_id": llm_files["npz"]},
        "baseline": True,
    }, body
    assert status == 201
    page.wait_for_url(re.compile(r"/jobs/job_\w+$"))


def test_hf_file_form_checks_its_fields_and_shows_the_apis_message(
    page: Page, server: Api, llm_files: dict[str, str]
) -> None:
    """The student model is required for hf_file and the method's fields are checked in the
    page; what the API refuses (here an evaluation file deleted after the page was loaded)
    is shown in its words."""
    sign_in(page, server.key)
    page.goto("/new")
    page.select_option("#arch", "hf_file")
    expect(page.locator("#student-existing")).to_be_visible()
    page.select_option("#student-existing", "")
    page.select_option("#method", "top_k")
    page.fill("#top-k", "0")
    page.click("#submit")
    errors = page.locator("#form-errors")
    expect(errors).to_contain_text("Choose a student model file")
    expect(errors).to_contain_text("Top k must be at least 1.")
    expect(page.locator("#student-existing")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#top-k")).to_have_attribute("aria-invalid", "true")

    page.select_option("#student-existing", llm_files["student"])
    page.fill("#top-k", "16")
    page.select_option("#teacher-existing", llm_files["teacher"])
    page.select_option("#dataset-existing", llm_files["dataset"])
    page.select_option("#eval-existing", llm_files["eval"])
    with server.client as client:
        assert client.delete(f"/v1/files/{llm_files['eval']}").status_code == 200
    body, status = submit_form(page)
    assert body["dataset"] == {"file_id": llm_files["dataset"], "eval_file_id": llm_files["eval"]}
    assert status == 404
    expect(errors).to_contain_text(
        f"dataset.eval_file_id: there is no file {llm_files['eval']!r} in your account"
    )
    expect(page.locator("#submit")).to_be_enabled()
    assert page.url.endswith("/new")
