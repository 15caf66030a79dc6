"""Golden values for the transformer losses (computed by hand below)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from worker.kd.losses import get_loss
from worker.kd.losses.transformer import attention_log_probs
from worker.kd.spec import LossTerm


def test_soft_ce_golden() -> None:
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    # T=1: targets (0.75, 0.25); -sum p log q = log 2
    assert get_loss("soft_ce", temperature=1.0)(student, teacher).item() == pytest.approx(
        math.log(2.0)
    )
    # T=2: targets softmax(log3/2, 0) = (sqrt3, 1)/(sqrt3+1); student uniform: 4 * log 2
    assert get_loss("soft_ce", temperature=2.0)(student, teacher).item() == pytest.approx(
        4 * math.log(2.0)
    )


def test_embedding_mse_golden() -> None:
    s, t = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    assert get_loss("embedding_mse")(s, t).item() == pytest.approx((1 + 4 + 0 + 1) / 4)
    assert get_loss("embedding_mse", reduction="sum")(s, t).item() == pytest.approx((5 + 1) / 2)
    unit = torch.nn.functional.normalize(torch.randn(3, 384), dim=-1)
    other = torch.nn.functional.normalize(torch.randn(3, 384), dim=-1)
    cos = (unit * other).sum(-1)
    summed = get_loss("embedding_mse", reduction="sum")(unit, other)
    assert summed.item() == pytest.approx(float((2 - 2 * cos).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        get_loss("embedding_mse", reduction="max")


def test_hidden_cosine_golden_and_width_check() -> None:
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert get_loss("hidden_cosine")(s, t).item() == pytest.approx(0.5)  # (1 + 0) / 2
    with pytest.raises(ValueError, match="equal width"):
        get_loss("hidden_cosine")(torch.ones(2, 3), torch.ones(2, 4))


def test_self_attention_kl_golden() -> None:
    s = torch.tensor([[[0.5, 0.5]]])  # (N=1, heads=1, keys=2)
    t = torch.tensor([[[1.0, 0.0]]])
    loss = get_loss("self_attention_kl")  # the student's maps as log-probabilities
    assert loss(attention_log_probs(s), t).item() == pytest.approx(math.log(2.0))
    assert loss(attention_log_probs(t), t).item() == pytest.approx(0.0, abs=1e-6)


def test_mapped_layer_terms_take_both_layers_or_neither() -> None:
    """hidden_cosine and self_attention_kl follow the student's layer map when no layers
    are named; naming one side only is refused."""
    for kind in ("hidden_cosine", "self_attention_kl"):
        assert LossTerm(kind=kind).teacher_layer is None
        assert LossTerm(kind=kind, teacher_layer="4", student_layer="2").student_layer == "2"
        with pytest.raises(ValidationError, match="both layers, or neither"):
            LossTerm(kind=kind, teacher_layer="4")
    assert LossTerm(kind="hint").teacher_layer is None  # paired automatically (penultimate)
    with pytest.raises(ValidationError, match="both layers, or neither"):
        LossTerm(kind="hint", student_layer="2")
