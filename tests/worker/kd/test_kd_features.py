"""Layer outputs of eager modules by module path: the right tensors, gradients through them,
and clear errors for layers that are not there or cannot be read."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.kd.errors import InvalidSpec
from worker.kd.training.features import describe_layers, module_features


class Shared(nn.Module):
    """One activation module called twice, a tuple-returning submodule, an unused one."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5))
        self.act = nn.ReLU()
        self.pair = nn.LSTM(5, 3, batch_first=True)
        self.unused = nn.Linear(2, 2)
        self.head = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.body(x))  # (B, 5)
        self.pair(hidden.unsqueeze(1))
        return self.head(self.act(-hidden))  # (B, 4)


def test_features_are_the_submodules_outputs_and_carry_gradients() -> None:
    torch.manual_seed(0)
    model, x = Shared().train(), torch.randn(3, 6)
    out, features = module_features(model, x, ["body", "body.0", "head"])
    torch.testing.assert_close(features["body.0"], model.body[0](x))
    assert features["head"] is out
    features["body"].pow(2).sum().backward()
    assert model.body[0].weight.grad is not None and model.body[0].weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None  # the head is after the layer


def test_a_module_called_twice_gives_its_last_output() -> None:
    model, x = Shared().eval(), torch.randn(3, 6)
    _, features = module_features(model, x, ["act"])
    torch.testing.assert_close(features["act"], torch.relu(-torch.relu(model.body(x))))


def test_no_layers_is_a_plain_forward() -> None:
    model, x = Shared().eval(), torch.randn(2, 6)
    out, features = module_features(model, x, [])
    assert features == {}
    torch.testing.assert_close(out, model(x))


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        ("body.7", r"No layer named 'body\.7'; the model's layers are: body, body\.0, body\.1"),
        ("", "No layer named ''"),
        ("pair", "returns a tuple, not one tensor"),
        ("unused", "was not called"),
    ],
)
def test_unreadable_layers_are_refused_clearly(layer: str, match: str) -> None:
    model = Shared()
    with pytest.raises(InvalidSpec, match=match):
        module_features(model, torch.randn(2, 6), [layer])
    assert all(not m._forward_hooks for m in model.modules())  # hooks never outlive a call


def test_torchscript_modules_have_no_layers() -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(InvalidSpec, match=r"'0' cannot be read from a TorchScript model"):
        module_features(scripted, torch.randn(2, 3), ["0"])
    assert describe_layers(scripted, torch.randn(2, 3)) == []


def test_describe_layers_lists_tensor_outputs_with_per_sample_shapes() -> None:
    model = Shared().train()
    stats = model.body[1].running_mean.clone()
    layers = describe_layers(model, torch.randn(1, 6))
    assert layers == [("body", (5,)), ("body.0", (5,)), ("body.1", (5,)), ("act", (5,)),
                      ("head", (4,))]  # fmt: skip
    assert model.training  # mode restored
    torch.testing.assert_close(model.body[1].running_mean, stats)  # no statistics updated
