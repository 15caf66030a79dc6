"""The search space: which loss families a search draws from for a given job, and that
every suggestion becomes a valid job spec whose feature and relation terms name no layers
(the engine pairs the penultimate features)."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from worker.kd.spec import DEFAULT_TOKEN_SHARE, JobSpec
from worker.search_space import (
    MIXED_FAMILIES,
    SearchContext,
    apply,
    own_params,
    suggest,
    teacher_pairable,
)

MIXED = ["kd+hint", "kd+rkd", "kd+sp", "kd+pkt"]


def context(labelled: bool = True, arrays: bool = True, pairable: bool = True) -> SearchContext:
    return SearchContext(labelled, arrays, epochs=8, learning_rate=1e-2, pairable=pairable)


def parent_spec(teacher_format: str = "torchscript") -> dict[str, Any]:
    return JobSpec.model_validate(
        {
            "teacher": {"file_id": "file_teacher", "format": teacher_format},
            "student": {"arch": "mlp", "hidden": [16]},
            "dataset": {"file_id": "file_dataset"},
            "training": {"epochs": 8, "learning_rate": 0.01},
            "baseline": True,
            "search": {"trials": 8},
        }
    ).model_dump(mode="json", exclude_unset=True)


def test_the_mixed_families_are_the_feature_and_relation_mixes() -> None:
    assert list(MIXED_FAMILIES) == MIXED
    assert context().families == ["kd", "dkd", *MIXED]


@pytest.mark.parametrize(
    ("ctx", "families"),
    [
        (context(pairable=False), ["kd", "dkd"]),  # e.g. an ONNX teacher
        (context(labelled=False), ["kd"]),  # teacher only: no cross-entropy to mix with
        (context(arrays=False), ["kd"]),  # texts: a transformer job
    ],
)
def test_families_are_left_out_where_they_cannot_run(
    ctx: SearchContext, families: list[str]
) -> None:
    assert ctx.families == families


def test_the_teacher_format_decides_whether_layers_pair() -> None:
    assert teacher_pairable("torchscript") and teacher_pairable("safetensors")
    for fmt in ("onnx", "torch_export", "hf_zip", "auto", None):
        assert not teacher_pairable(fmt)


@pytest.mark.parametrize("family", MIXED)
def test_a_mixed_trial_is_a_valid_spec_with_kd_ce_and_unpaired_terms(family: str) -> None:
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial({"family": family, "alpha": 0.6, "temperature": 4.0})
    params = suggest(study.ask(), context())
    assert params["family"] == family
    low, high = MIXED_FAMILIES[family].weights
    assert low <= params["extra_weight"] <= high
    child = JobSpec.model_validate(apply(parent_spec(), params))
    assert child.search is None and child.baseline is False
    terms = child.distillation.losses or []
    kd, ce, *extra = terms
    assert (kd.kind, kd.weight, kd.params) == ("kd", 0.6, {"temperature": 4.0})
    assert (ce.kind, ce.weight) == ("ce", pytest.approx(0.4))
    assert [(t.kind, t.weight) for t in extra] == [
        (kind, pytest.approx(params["extra_weight"] * factor))
        for kind, factor in MIXED_FAMILIES[family].terms
    ]
    assert all(t.teacher_layer is None and t.student_layer is None for t in extra)


def test_every_suggestion_is_a_valid_spec_from_its_family() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        params = suggest(study.ask(), context())
        seen.add(params["family"])
        child = JobSpec.model_validate(apply(parent_spec(), params))
        kinds = [t.kind for t in child.distillation.losses or []]
        assert ("extra_weight" in params) == (params["family"] in MIXED_FAMILIES)
        if params["alpha"] == 0.0:
            assert kinds == ["ce"]
        elif params["family"] in MIXED_FAMILIES:
            assert kinds[0] == "kd" and len(kinds) > 1
    assert seen >= set(MIXED)  # every family is drawn


def test_a_search_without_pairable_layers_never_draws_a_mixed_family() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(20):
        params = suggest(study.ask(), context(pairable=False))
        assert params["family"] in ("kd", "dkd") and "extra_weight" not in params
        JobSpec.model_validate(apply(parent_spec("onnx"), params))


def test_before_the_plan_a_trial_leaves_its_schedule_to_its_worker() -> None:
    """No reference schedule yet: the trial draws neither epochs nor learning rate, its spec
    leaves them to the planner, within half the search's budget."""
    unplanned = SearchContext(True, True, epochs=None, learning_rate=None, pairable=False)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    params = suggest(study.ask(), unplanned)
    assert "epochs" not in params and "learning_rate" not in params
    bare = {**parent_spec(), "training": {"budget_seconds": 600}}
    child = JobSpec.model_validate(apply(bare, params))
    assert child.training.epochs is None and child.training.learning_rate is None
    assert child.training.budget_seconds == 450  # the search's 900 s, halved


def test_trials_are_drawn_around_the_reference_schedule() -> None:
    planned = SearchContext(True, True, epochs=108, learning_rate=1e-2, pairable=False)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
    for _ in range(20):
        params = suggest(study.ask(), planned)
        assert 27 <= params["epochs"] <= 108 and 1e-3 <= params["learning_rate"] <= 1e-1


def text_spec(distillation: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "teacher": {"file_id": "file_teacher"},
        "student": {"arch": "from_teacher", "num_layers": 1},
        "dataset": {"file_id": "file_dataset"},
        "baseline": True,
        "search": {"budget_seconds": 600},
    }
    if distillation is not None:
        body["distillation"] = distillation
    return JobSpec.model_validate(body).model_dump(mode="json", exclude_unset=True)


def test_a_text_search_draws_the_texts_augmentation_on_and_off() -> None:
    texts = SearchContext(True, False, 8, 3e-3, text_task="sequence_classification")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(12):
        params = suggest(study.ask(), texts)
        child = JobSpec.model_validate(apply(text_spec(), params, texts))
        drawn.add(params["augment"])
        share = child.distillation.augment.tokens  # stated: trials state every choice
        assert share == (DEFAULT_TOKEN_SHARE if params["augment"] else 0.0)
        assert not child.distillation.augment.active  # no tensor augmentation for texts
    assert drawn == {False, True}
    # Without texts to corrupt (a causal LM, whose texts are its targets) it is never drawn.
    lm = SearchContext(True, False, epochs=8, learning_rate=3e-3, text_task="causal_lm")
    assert not any(suggest(study.ask(), lm)["augment"] for _ in range(6))


@pytest.mark.parametrize(
    ("augment", "own"),
    [(None, True), ({"tokens": 0.3}, True), ({"tokens": 0.0}, False), ({"tokens": 0.1}, None)],
)  # unstated: a text classifier's default share, which the space draws
def test_a_text_specs_own_recipe_is_a_candidate_with_its_augmentation(
    augment: dict[str, Any] | None, own: bool | None
) -> None:
    texts = SearchContext(True, False, 8, 3e-3, text_task="sequence_classification")
    distillation: dict[str, Any] = {"temperature": 1.0, "alpha": 0.9}
    if augment is not None:
        distillation["augment"] = augment
    params = own_params(text_spec(distillation)["distillation"], texts)
    if own is None:  # a share the space does not draw: not expressible as a trial
        assert params is None
    else:
        assert params is not None and params["augment"] is own
