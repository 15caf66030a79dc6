"""What the job page states about a job: only what the job uses."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.web.render import loss_label
from tests.web.conftest import sign_in, submit_job


def test_loss_names_what_the_job_uses() -> None:
    classic = {"student": {"arch": "cnn"}, "distillation": {"temperature": 4.0, "alpha": 0.9}}
    assert loss_label(classic) == "temperature 4.0 · alpha 0.9"
    terms = [{"kind": "kd", "weight": 0.9}, {"kind": "hint", "weight": 1.0}]
    named = {"student": {"arch": "mlp"}, "distillation": {"temperature": 4.0, "losses": terms}}
    assert loss_label(named) == "0.9·kd + 1·hint"
    # A transformer job stores the default temperature and alpha but does not use them.
    embedding = {"student": {"arch": "from_teacher"}, "distillation": {"temperature": 4.0}}
    assert loss_label(embedding) is None


def test_job_page_states_the_loss_and_no_teacher_legend_before_a_line(
    web: TestClient, key: str
) -> None:
    job = submit_job(web, key)
    sign_in(web, key)
    page = web.get(f"/jobs/{job['id']}").text
    assert "Temperature · alpha" not in page
    assert '<dd id="job-loss">temperature 4.0 · alpha 0.9</dd>' in page  # the default
    assert '<span id="legend-teacher" hidden>' in page


def test_new_job_form_leaves_recipe_and_budget_to_the_server(web: TestClient, key: str) -> None:
    sign_in(web, key)
    page = web.get("/new").text
    shown = {"temperature": "default", "alpha": "default", "epochs": "planned",
             "batch_size": "planned", "learning_rate": "planned", "seed": "0"}  # fmt: skip
    for name, placeholder in shown.items():
        field = page.split(f'name="{name}"', 1)[1].split(">", 1)[0]
        assert "value=" not in field, (name, field)
        assert f'placeholder="{placeholder}"' in field, (name, field)
