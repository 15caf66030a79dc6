"""The dashboard's server side: sign-in, sign-out, and which jobs a tenant sees."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.api.deps import SESSION_COOKIE
from app.web import routes
from app.web.render import format_percent
from tests.app.conftest import upload
from tests.factories import auth, new_key, small_dataset
from tests.web.conftest import mark_succeeded, sign_in, submit_job


def test_signed_out_home_is_the_sign_in_form(web: TestClient) -> None:
    response = web.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/login"' in response.text
    assert 'name="key"' in response.text
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


def test_bad_key_is_401_with_a_message_and_no_cookie(web: TestClient) -> None:
    response = web.post("/login", data={"key": "dk_not-a-real-key"})
    assert response.status_code == 401
    assert "That API key is unknown or was revoked." in response.text
    assert 'name="key"' in response.text
    assert "set-cookie" not in response.headers


def test_empty_key_is_401_asking_for_one(web: TestClient) -> None:
    response = web.post("/login", data={"key": "  "})
    assert response.status_code == 401
    assert "Paste your API key." in response.text


def test_good_key_sets_a_strict_http_only_cookie_and_redirects(web: TestClient, key: str) -> None:
    response = web.post("/login", data={"key": key})
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={key};")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    assert "Secure" not in cookie  # plain http on localhost; set behind https


def test_sign_in_returns_to_the_page_asked_for_but_never_off_site(
    web: TestClient, key: str
) -> None:
    asked = web.get("/new")
    assert asked.status_code == 303
    assert asked.headers["location"] == "/?next=%2Fnew"
    assert 'name="next" value="/new"' in web.get(asked.headers["location"]).text
    assert web.post("/login", data={"key": key, "next": "/new"}).headers["location"] == "/new"
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        response = web.post("/login", data={"key": key, "next": target})
        assert response.headers["location"] == "/"


def test_jobs_page_lists_only_this_tenants_jobs(web: TestClient, key: str) -> None:
    mine = submit_job(web, key)
    theirs = submit_job(web, new_key())
    sign_in(web, key)
    page = web.get("/")
    assert page.status_code == 200
    assert f'href="/jobs/{mine["id"]}"' in page.text
    assert theirs["id"] not in page.text
    assert '<span class="badge badge-queued">queued</span>' in page.text
    assert "mlp (16)" in page.text


def test_jobs_page_shows_student_accuracy_of_succeeded_jobs(web: TestClient, key: str) -> None:
    job = submit_job(web, key)
    mark_succeeded(job["id"], {"student_accuracy": 0.98055, "teacher_accuracy": 0.99})
    sign_in(web, key)
    page = web.get("/").text
    assert '<span class="badge badge-succeeded">succeeded</span>' in page
    assert format_percent(0.98055) == "98.06%"
    assert "98.06%" in page


def test_jobs_page_pages_with_after(
    web: TestClient, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes, "JOBS_PER_PAGE", 2)
    links = [f'href="/jobs/{submit_job(web, key)["id"]}"' for _ in range(3)]
    sign_in(web, key)
    first = web.get("/").text
    assert links[2] in first and links[1] in first and links[0] not in first
    after = links[1].removeprefix('href="/jobs/').removesuffix('"')
    assert f'href="/?after={after}"' in first
    second = web.get(f"/?after={after}").text
    assert links[0] in second and links[1] not in second
    assert "Older" not in second and "Newest" in second


def test_job_page_shows_own_job(web: TestClient, key: str) -> None:
    job = submit_job(web, key)
    sign_in(web, key)
    page = web.get(f"/jobs/{job['id']}")
    assert page.status_code == 200
    assert f'data-job-id="{job["id"]}"' in page.text
    assert 'id="chart-loss"' in page.text and 'id="chart-accuracy"' in page.text
    assert 'id="cancel"' in page.text


def test_job_page_has_a_verdict_badge(web: TestClient, key: str) -> None:
    """The report's verdict is a visible badge with its words (filled by app.js)."""
    job = submit_job(web, key)
    sign_in(web, key)
    page = web.get(f"/jobs/{job['id']}").text
    assert 'id="report-verdict"' in page and 'id="verdict-badge"' in page
    script, css = web.get("/static/app.js").text, web.get("/static/app.css").text
    for outcome, words in (
        ("kd_better", "Distillation helped"),
        ("no_gain", "No significant gain"),
        ("baseline_better", "Baseline is better"),
    ):
        assert f'{outcome}: "{words}"' in script and f".badge-{outcome}" in css


def test_another_tenants_job_and_an_unknown_id_are_404_pages(web: TestClient, key: str) -> None:
    theirs = submit_job(web, new_key())
    sign_in(web, key)
    for job_id in (theirs["id"], "job_doesnotexist"):
        page = web.get(f"/jobs/{job_id}")
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert "Not found" in page.text
        assert "There is no job" in page.text


def test_job_page_signed_out_goes_to_sign_in(web: TestClient, key: str) -> None:
    job = submit_job(web, key)
    response = web.get(f"/jobs/{job['id']}")
    assert response.status_code == 303
    assert response.headers["location"] == f"/?next=%2Fjobs%2F{job['id']}"


def test_new_job_page_offers_uploaded_files_escaped(web: TestClient, key: str) -> None:
    dataset = upload(web, auth(key), "dataset", small_dataset(), "<img src=x onerror=alert(1)>.npz")
    upload(web, auth(new_key()), "dataset", small_dataset(), "someone-elses.npz")
    sign_in(web, key)
    page = web.get("/new")
    assert page.status_code == 200
    assert f'<option value="{dataset["id"]}" selected>' in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;.npz" in page.text
    assert "<img" not in page.text
    assert "someone-elses.npz" not in page.text


def test_logout_clears_the_cookie(web: TestClient, key: str) -> None:
    sign_in(web, key)
    assert 'action="/logout"' in web.get("/").text
    response = web.post("/logout")
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f'{SESSION_COOKIE}="";') or cookie.startswith(f"{SESSION_COOKIE}=;")
    assert "Max-Age=0" in cookie
    assert web.cookies.get(SESSION_COOKIE) is None
    assert 'action="/login"' in web.get("/").text


def test_revoked_key_in_the_cookie_shows_the_sign_in_form(web: TestClient) -> None:
    from app.db import session_scope
    from app.services.keys import revoke_key

    key = new_key()
    sign_in(web, key)
    with session_scope() as session:
        revoke_key(session, key)
    assert 'action="/login"' in web.get("/").text


def test_static_files_are_served_and_versioned(web: TestClient) -> None:
    page = web.get("/").text
    assert '<script src="/static/app.js?v=' in page
    script = web.get("/static/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert web.get("/static/app.css").status_code == 200


def test_pages_stay_out_of_the_api_schema(web: TestClient) -> None:
    paths = web.get("/openapi.json").json()["paths"]
    assert not {"/", "/login", "/logout", "/new", "/jobs/{job_id}"} & set(paths)


def test_new_job_page_says_the_training_fields_are_planned(web: TestClient, key: str) -> None:
    sign_in(web, key)
    page = web.get("/new").text
    for field in ("epochs", "batch-size", "learning-rate"):
        tag = page[page.index(f'<input id="{field}"') :].split(">", 1)[0]
        assert 'placeholder="planned"' in tag, tag
    seed = page[page.index('<input id="seed"') :].split(">", 1)[0]
    assert 'placeholder="0"' in seed  # the seed is not planned: its default is 0
    assert 'placeholder="default"' in page[page.index('<input id="temperature"') :].split(">")[0]


def test_job_page_shows_a_language_models_figures_and_samples(web: TestClient, key: str) -> None:
    """A causal LM's report fills perplexity rows and a samples table (app.js)."""
    job = submit_job(web, key)
    sign_in(web, key)
    page = web.get(f"/jobs/{job['id']}").text
    assert 'id="report-samples"' in page
    script = web.get("/static/app.js").text
    for needle in ("renderSamples(report)", '"Perplexity"', "Baseline perplexity",
                   "Teacher cache per token", 'eval_file: "the evaluation file"',
                   "As the teacher's draft (speculative decoding)",
                   "Generation tokens/s, batch 1 / 8"):  # fmt: skip
        assert needle in script


def _tag(page: str, marker: str) -> str:
    """The opening tag that contains `marker`."""
    at = page.index(marker)
    return page[page.rindex("<", 0, at) : page.index(">", at) + 1]


def _label_of(page: str, input_id: str) -> str:
    """The <label> wrapping the input with this id, whole."""
    at = page.index(f'id="{input_id}"')
    return page[page.rindex("<label", 0, at) : page.index("</label>", at)]


def test_new_job_form_offers_transformer_students_and_llm_methods(
    web: TestClient, key: str
) -> None:
    """from_teacher and hf_file students; the language-model fieldset (hidden until a
    transformer student is chosen) with one field group per method, shown by app.js."""
    sign_in(web, key)
    page = web.get("/new").text
    assert '<option value="from_teacher">from_teacher — layers of a Hugging Face teacher' in page
    assert '<option value="hf_file">hf_file — an uploaded smaller model</option>' in page
    layers = _label_of(page, "num-layers")
    assert 'data-arch="from_teacher" hidden' in layers and "Number of layers" in layers
    fieldset = _tag(page, 'id="transformer-fields"')
    assert 'data-kind="transformer"' in fieldset and "hidden" in fieldset
    methods = page[page.index('<select id="method"') :].split("</select>")[0]
    assert '<option value="logits" selected>' in methods
    for method in ("top_k", "sequence", "on_policy"):
        assert f'<option value="{method}">' in methods
    shown_for = {
        "top-k": 'data-method="top_k"',
        "lmbda": 'data-method="on_policy"',
        "beta": 'data-method="on_policy"',
        "max-new-tokens": 'data-method="sequence on_policy"',
        "generation-temperature": 'data-method="sequence on_policy"',
    }
    for field, attribute in shown_for.items():
        label = _label_of(page, field)
        assert f"<label {attribute} hidden>" in label, label
    assert "data-method" not in _label_of(page, "max-length")  # every transformer job
    script = web.get("/static/app.js").text
    assert 'new Set(["from_teacher", "hf_file"])' in script


def test_new_job_form_picks_a_student_model_and_an_optional_evaluation_file(
    web: TestClient, key: str
) -> None:
    """hf_file's picker lists the uploaded student models (the first chosen); the evaluation
    picker lists datasets with none chosen; hints for transformer jobs are in the page."""
    headers = auth(key)
    student = upload(web, headers, "student", b"a smaller model, checked by the worker", "s.zip")
    dataset = upload(web, headers, "dataset", small_dataset(), "d.npz")
    sign_in(web, key)
    page = web.get("/new").text
    picker = _tag(page, 'data-purpose="student"')
    assert 'data-target="student.file_id"' in picker and 'data-arch="hf_file" hidden' in picker
    student_select = page[page.index('<select id="student-existing"') :].split("</select>")[0]
    assert f'<option value="{student["id"]}" selected>' in student_select
    evaluation = _tag(page, 'data-target="dataset.eval_file_id"')
    assert 'data-purpose="dataset"' in evaluation and "data-optional" in evaluation
    eval_select = page[page.index('<select id="eval-existing"') :].split("</select>")[0]
    assert f'<option value="{dataset["id"]}">' in eval_select and "selected" not in eval_select
    assert '<label for="eval-existing">' in page and '<label for="eval-upload">' in page
    assert 'aria-describedby="eval-hint"' in eval_select
    teacher_hint = _tag(page, 'id="teacher-hint"')
    assert 'data-hint-transformer="A Hugging Face model directory as a ZIP' in teacher_hint
    assert 'data-hint-transformer="JSONL texts' in _tag(page, 'id="dataset-hint"')


def test_new_job_form_has_a_baseline_checkbox(web: TestClient, key: str) -> None:
    sign_in(web, key)
    page = web.get("/new").text
    box = _tag(page, 'id="baseline"')
    assert 'type="checkbox"' in box and "checked" not in box
    assert 'aria-describedby="baseline-hint"' in box
    assert "Train a baseline without the teacher too" in _label_of(page, "baseline")
    assert "spec.baseline = true" in web.get("/static/app.js").text
