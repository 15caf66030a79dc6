"""The weighted sum of loss terms and its validating builder."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from worker.kd.losses import (
    KD,
    CompositeLoss,
    CrossEntropy,
    Hint,
    LossTerm,
    SimilarityPreserving,
    build_loss_terms,
    shape_key,
)

B, K = 4, 5
SHAPES = {
    "student.features.1": (3, 4, 4),
    "student.head.0": (8,),
    "teacher.layer3": (6, 2, 2),
    "teacher.pool": (16,),
}
HINT = {"kind": "hint", "student_layer": "features.1", "teacher_layer": "layer3"}
ON_VECTORS = {"student_layer": "head.0", "teacher_layer": "pool"}


def batch() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "student_logits": torch.randn(B, K, generator=g, requires_grad=True),
        "teacher_logits": torch.randn(B, K, generator=g),
        "labels": torch.tensor([0, 1, 2, 4]),
        "student_features": {
            "features.1": torch.randn(B, 3, 4, 4, generator=g, requires_grad=True),
            "head.0": torch.randn(B, 8, generator=g, requires_grad=True),
        },
        "teacher_features": {
            "layer3": torch.randn(B, 6, 2, 2, generator=g),
            "pool": torch.randn(B, 16, generator=g),
        },
    }


def test_total_is_the_weighted_sum_of_the_parts() -> None:
    hint = Hint((3, 4, 4), (6, 2, 2))
    loss = CompositeLoss(
        [
            ("kd", 0.5, KD(temperature=2.0)),
            ("ce", 2.0, CrossEntropy()),
            ("hint", 3.0, hint, "layer3", "features.1"),
            LossTerm("sp", 0.25, SimilarityPreserving(), "pool", "head.0"),
        ]
    )
    x = batch()
    parts = loss(**x)
    s, t = x["student_logits"], x["teacher_logits"]
    sf, tf = x["student_features"], x["teacher_features"]
    expected = {
        "kd": KD(temperature=2.0)(s, t),
        "ce": CrossEntropy()(s, x["labels"]),
        "hint": hint(sf["features.1"], tf["layer3"]),
        "sp": SimilarityPreserving()(sf["head.0"], tf["pool"]),
    }
    assert list(parts.parts) == list(expected)
    for name, value in expected.items():
        assert parts.parts[name].item() == pytest.approx(value.item(), rel=1e-6)
    weights = {"kd": 0.5, "ce": 2.0, "hint": 3.0, "sp": 0.25}
    total = sum(weights[name] * value.item() for name, value in expected.items())
    assert parts.total.item() == pytest.approx(total, rel=1e-6)
    assert loss.student_layers == ("features.1", "head.0")
    assert loss.teacher_layers == ("layer3", "pool")


def test_adapters_are_parameters_the_optimizer_trains() -> None:
    loss = build_loss_terms([{"kind": "kd"}, HINT, {"kind": "cosine", **ON_VECTORS}], SHAPES)
    hint, cosine = loss.terms[1].loss, loss.terms[2].loss
    assert isinstance(hint, Hint) and isinstance(hint.adapter, nn.Conv2d)
    adapters = [*hint.adapter.parameters(), *cosine.parameters()]
    assert {id(p) for p in loss.parameters()} == {id(p) for p in adapters}
    assert len(adapters) == 4  # conv weight and bias, linear weight and bias
    before = [p.detach().clone() for p in adapters]
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.1)
    loss(**batch()).total.backward()
    optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters)
    assert all(not torch.equal(a, b) for a, b in zip(adapters, before, strict=True))


def test_built_terms_carry_weights_layers_and_names() -> None:
    loss = build_loss_terms(
        [
            {"kind": "kd", "weight": 0.9, "params": {"temperature": 3.0}},
            {"kind": "ce", "weight": 0.1},
            {**HINT, "weight": 2},
            {"kind": "kd", "params": {"temperature": 1.0}},
            {"kind": "rkd_angle", "name": "angle", **ON_VECTORS},
        ],
        SHAPES,
        has_labels=True,
    )
    summary = [(t.name, t.weight, t.student_layer, t.teacher_layer) for t in loss.terms]
    assert summary == [
        ("kd", 0.9, None, None),
        ("ce", 0.1, None, None),
        ("hint", 2.0, "features.1", "layer3"),
        ("kd_2", 1.0, None, None),
        ("angle", 1.0, "head.0", "pool"),
    ]
    first_kd = loss.terms[0].loss
    assert isinstance(first_kd, KD) and first_kd.temperature == 3.0
    parts = loss(**batch())
    assert set(parts.parts) == {"kd", "ce", "hint", "kd_2", "angle"}


def test_unknown_kind_lists_the_known_kinds() -> None:
    with pytest.raises(ValueError, match=r"losses\[1\]: unknown kind 'fitnet'; known kinds: "):
        build_loss_terms([{"kind": "kd"}, {"kind": "fitnet"}], SHAPES)
    with pytest.raises(ValueError, match="unknown kind None; known kinds: attention, ce, "):
        build_loss_terms([{"weight": 1.0}], SHAPES)


@pytest.mark.parametrize("missing", ["teacher_layer", "student_layer"])
def test_layer_losses_name_the_missing_layer_key(missing: str) -> None:
    spec = {key: value for key, value in HINT.items() if key != missing}
    message = rf"losses\[0\] \('hint'\) is a feature loss and needs '{missing}'"
    with pytest.raises(ValueError, match=message):
        build_loss_terms([spec], SHAPES)
    with pytest.raises(ValueError, match=f"relation loss and needs '{missing}'"):
        build_loss_terms([{**spec, "kind": "pkt"}], SHAPES)


def test_unknown_layers_list_the_known_ones() -> None:
    message = "the teacher has no layer 'layer4'; known teacher layers: layer3, pool"
    with pytest.raises(ValueError, match=message):
        build_loss_terms([{**HINT, "teacher_layer": "layer4"}], SHAPES)


def test_label_losses_need_labels() -> None:
    with pytest.raises(ValueError, match=r"losses\[1\] \('ce'\) needs labels, but the dataset"):
        build_loss_terms([{"kind": "kd"}, {"kind": "ce"}], SHAPES, has_labels=False)
    with pytest.raises(ValueError, match=r"'dkd'\) needs labels"):
        build_loss_terms([{"kind": "dkd"}], SHAPES, has_labels=False)
    loss = build_loss_terms([{"kind": "ce"}], SHAPES)  # labels unknown at build time
    with pytest.raises(ValueError, match="The 'ce' loss needs labels, and this batch has none"):
        loss(**{**batch(), "labels": None})


def test_shape_mismatch_names_both_shapes() -> None:
    shapes = {**SHAPES, "student.seq": (3, 8)}
    message = r"student features of shape \(3, 8\) with teacher features of shape \(6, 2, 2\)"
    with pytest.raises(ValueError, match=message):
        build_loss_terms([{**HINT, "student_layer": "seq"}], shapes)
    with pytest.raises(ValueError, match=r"'attention'.*\(8,\).*\(16,\)"):
        build_loss_terms([{"kind": "attention", **ON_VECTORS}], SHAPES)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "kd", "weight": -1}, "weight must be finite and non-negative"),
        ({"kind": "kd", "weight": float("nan")}, "weight must be finite and non-negative"),
        ({"kind": "kd", "weight": "1"}, "weight must be a number"),
        ({"kind": "kd", "weight": True}, "weight must be a number"),
        ({"kind": "kd", "params": {"tau": 2}}, r"losses\[0\] \('kd'\): bad params"),
        ({"kind": "kd", "params": {"temperature": -1}}, "temperature must be positive"),
        ({"kind": "kd", "params": [2]}, "params must be an object"),
        ({"kind": "kd", "teacher_layer": "pool"}, "on logits and takes no layers"),
        ({"kind": "kd", "wieght": 1}, "unknown keys wieght; allowed: kind, weight"),
        ({"kind": "kd", "name": ""}, "name must be a non-empty string"),
        ({**HINT, "params": {"student_shape": (1,)}}, "shapes come from the layers"),
        ("kd", "must be an object with a 'kind'"),
        ({"kind": ["kd"]}, r"unknown kind \['kd'\]; known kinds"),
    ],
)
def test_bad_specs_say_what_to_fix(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_loss_terms([spec], SHAPES)


def test_term_names_are_unique() -> None:
    with pytest.raises(ValueError, match="repeated: a"):
        build_loss_terms([{"kind": "kd", "name": "a"}, {"kind": "ce", "name": "a"}], SHAPES)
    loss = build_loss_terms([{"kind": "kd"}, {"kind": "ce", "name": "kd"}], SHAPES)
    assert [t.name for t in loss.terms] == ["kd_2", "kd"]
    with pytest.raises(ValueError, match="at least one term"):
        build_loss_terms([], SHAPES)
    with pytest.raises(ValueError, match="'mse' is a MSELoss, not a registered"):
        CompositeLoss([("mse", 1.0, nn.MSELoss())])


def test_missing_features_at_run_time_name_the_layer() -> None:
    loss = build_loss_terms([HINT], SHAPES)
    x = batch()
    with pytest.raises(ValueError, match="needs the output of teacher layer 'layer3'"):
        loss(**{**x, "teacher_features": {}})


def test_trains_a_student_through_hooked_layers() -> None:
    """The whole path the engine will take: hooks, shapes, terms, one optimizer step."""
    torch.manual_seed(0)
    student = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, K)
    )
    teacher = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(24, K))
    captured: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
    for side, model, layer in (("student", student, "1"), ("teacher", teacher, "0")):
        model.get_submodule(layer).register_forward_hook(
            lambda _m, _i, out, side=side, layer=layer: captured[side].__setitem__(layer, out)
        )
    x = torch.randn(B, 1, 4, 4)
    with torch.no_grad():
        teacher_logits = teacher(x)
    student(x)
    shapes = {
        shape_key("student", "1"): tuple(captured["student"]["1"].shape[1:]),  # (3, 4, 4)
        shape_key("teacher", "0"): tuple(captured["teacher"]["0"].shape[1:]),  # (6, 2, 2)
    }
    layers = {"student_layer": "1", "teacher_layer": "0"}
    specs = [{"kind": "kd"}, {"kind": "hint", **layers}, {"kind": "attention", **layers}]
    loss = build_loss_terms(specs, shapes)
    optimizer = torch.optim.AdamW([*student.parameters(), *loss.parameters()], lr=1e-2)
    first = None
    for _ in range(20):
        parts = loss(student(x), teacher_logits, None, captured["student"], captured["teacher"])
        parts.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        first = parts.total.item() if first is None else first
    assert parts.total.item() < first
