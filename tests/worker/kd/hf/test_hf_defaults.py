"""The transformer default losses are the recipes that won in bench/hf_recipes.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.kd.hf.objective import default_terms
from worker.kd.spec import JobSpec

RESULTS = Path(__file__).resolve().parents[4] / "bench" / "results" / "hf_recipes.json"
MEASURED = [
    (default, case)
    for default in json.loads(RESULTS.read_text())["defaults"]
    for case in default["cases"]
]


def job(**distillation: Any) -> JobSpec:
    """A transformer job; with no arguments, one that states no distillation section."""
    spec: dict[str, Any] = {
        "teacher": {"file_id": "t"},
        "student": {"arch": "from_teacher", "num_layers": 2},
        "dataset": {"file_id": "d"},
    }
    if distillation:
        spec["distillation"] = distillation
    return JobSpec.model_validate(spec)


def rounded(terms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Terms with their numbers rounded (1 - 0.9 is not 0.1 in floating point)."""
    return [
        {
            **term,
            "weight": round(term["weight"], 6),
            "params": {
                k: v if isinstance(v, str) else round(v, 6)
                for k, v in term.get("params", {}).items()
            },
        }
        for term in terms
    ]


@pytest.mark.parametrize(("default", "case"), MEASURED, ids=[case["case"] for _, case in MEASURED])
def test_each_default_is_its_groups_measured_winner(
    default: dict[str, Any], case: dict[str, Any]
) -> None:
    terms = default_terms(job(), case["task"], case["labeled"], case["same_width"])
    assert rounded(terms) == rounded(default["terms"]), default["recipe"]


def test_a_stated_distillation_section_keeps_its_temperature_and_alpha() -> None:
    terms = default_terms(job(temperature=2.0, alpha=0.5), "causal_lm", False, False)
    assert rounded(terms) == rounded([
        {"kind": "soft_ce", "weight": 0.5, "params": {"temperature": 2.0}},
        {"kind": "ce", "weight": 0.5},
    ])  # fmt: skip
    unlabeled = default_terms(job(), "sequence_classification", False, True)
    assert [t["kind"] for t in unlabeled] == ["soft_ce", "hidden_cosine"]
