"""The registry: lookup, errors, each loss's family and needs, and the package's imports."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from worker.kd.losses import (
    LOSSES,
    DistillationLoss,
    HintonKDLoss,
    LossInputs,
    get_loss,
    loss_info,
    register_loss,
)

B, K = 4, 5

# One small instance and batch per registered loss; the test below keeps it complete.
EXAMPLES: dict[str, tuple[Callable[[], DistillationLoss], tuple[int, ...], tuple[int, ...]]] = {
    "hinton": (lambda: get_loss("hinton", temperature=2.0, alpha=0.5), (), ()),
    "kd": (lambda: get_loss("kd", temperature=2.0), (), ()),
    "dkd": (lambda: get_loss("dkd"), (), ()),
    "logit_mse": (lambda: get_loss("logit_mse"), (), ()),
    "ce": (lambda: get_loss("ce"), (), ()),
    "hint": (
        lambda: get_loss("hint", student_shape=(3, 4, 4), teacher_shape=(6, 2, 2)),
        (3, 4, 4),
        (6, 2, 2),
    ),
    "attention": (lambda: get_loss("attention"), (3, 4, 4), (6, 2, 2)),
    "cosine": (
        lambda: get_loss("cosine", student_shape=(7, 8), teacher_shape=(7, 16)),
        (7, 8),
        (7, 16),
    ),
    "rkd_distance": (lambda: get_loss("rkd_distance"), (8,), (16,)),
    "rkd_angle": (lambda: get_loss("rkd_angle"), (8,), (16,)),
    "sp": (lambda: get_loss("sp"), (3, 4, 4), (6, 2, 2)),
    "pkt": (lambda: get_loss("pkt"), (8,), (16,)),
    "soft_ce": (lambda: get_loss("soft_ce", temperature=2.0), (), ()),
    "reverse_kl": (lambda: get_loss("reverse_kl"), (), ()),
    "jsd": (lambda: get_loss("jsd", beta=0.5), (), ()),
    "embedding_mse": (lambda: get_loss("embedding_mse"), (), ()),
    "hidden_cosine": (lambda: get_loss("hidden_cosine"), (7, 8), (7, 8)),
    "self_attention_kl": (lambda: get_loss("self_attention_kl"), (2, 5), (2, 5)),
}

FAMILIES = {
    "response": {"hinton", "kd", "dkd", "logit_mse"},
    "feature": {"hint", "attention", "cosine"},
    "relation": {"rkd_distance", "rkd_angle", "sp", "pkt"},
    "label": {"ce"},
}


def test_every_registered_loss_has_an_example() -> None:
    assert set(EXAMPLES) == set(LOSSES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_loss_computes_a_finite_float32_scalar(name: str) -> None:
    make, student_shape, teacher_shape = EXAMPLES[name]
    loss = make()
    uses_layers = loss_info(name).needs_layers
    inputs = LossInputs(
        student_logits=torch.randn(B, K, requires_grad=True),
        teacher_logits=torch.randn(B, K),
        labels=torch.tensor([0, 1, 2, 4]),
        student_features=torch.randn(B, *student_shape) if uses_layers else None,
        teacher_features=torch.randn(B, *teacher_shape) if uses_layers else None,
    )
    value = loss.compute(inputs)
    assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value)
    assert loss.key == name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_loss_info_gives_family_and_needs(family: str) -> None:
    for name in FAMILIES[family]:
        info = loss_info(name)
        assert info.family == family
        assert info.needs_layers == (family in ("feature", "relation"))
        assert info.summary
    assert {n for n in LOSSES if loss_info(n).needs_labels} == {"dkd", "ce"}
    assert {n for n in LOSSES if loss_info(n).needs_shapes} == {"hint", "cosine"}


def test_get_loss_keeps_the_engines_default() -> None:
    loss = get_loss("hinton", temperature=1.0, alpha=0.5)
    assert isinstance(loss, HintonKDLoss)
    assert (loss.temperature, loss.alpha) == (1.0, 0.5)


def test_unknown_loss_lists_the_known_ones() -> None:
    known = ", ".join(sorted(LOSSES))
    with pytest.raises(ValueError, match=f"No loss 'nope' registered; known losses: {known}$"):
        get_loss("nope")
    with pytest.raises(ValueError, match="No loss 'nope' registered"):
        loss_info("nope")


def test_bad_parameters_name_the_loss() -> None:
    with pytest.raises(ValueError, match=r"Bad parameters for loss 'kd'.*tempreature"):
        get_loss("kd", tempreature=2.0)


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="'kd' is already registered"):

        @register_loss("kd")
        class Again(DistillationLoss):
            family = "response"
