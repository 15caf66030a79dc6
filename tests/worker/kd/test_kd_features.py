"""Layer outputs of eager modules by module path: the right tensors, gradients through them,
and clear errors for layers that are not there or cannot be read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from worker.kd.errors import InvalidSpec
from worker.kd.training.features import describe_layers, final_linear, module_features


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


class Head(nn.Module):
    """A classifier whose head reads a functional flatten: no module outputs its input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.unsqueeze(1))).mean(-1)  # (B, 3)
        return self.fc(h)  # (B, 4)


def test_a_layer_named_path_input_is_what_the_module_takes() -> None:
    torch.manual_seed(0)
    model, x = Head(), torch.randn(2, 8)
    assert final_linear(model, x) == "fc"
    out, features = module_features(model, x, ["fc:input", "conv"])
    expected = torch.relu(model.conv(x.unsqueeze(1))).mean(-1)
    torch.testing.assert_close(features["fc:input"], expected)
    torch.testing.assert_close(out, model.fc(expected))
    assert all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("make", [Head, lambda: nn.Sequential(nn.Linear(8, 5), nn.ReLU(),
                                                             nn.Linear(5, 4))])  # fmt: skip
def test_torchscript_gives_the_inputs_of_its_linear_layers_with_gradients(
    make: type[nn.Module], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model, x = make(), torch.randn(3, 8)
    torch.jit.script(model).save(str(tmp_path / "m.pt"))
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    head = final_linear(model, x)
    assert head is not None and final_linear(scripted, x) == head
    out, features = module_features(scripted, x, [f"{head}:input"])
    eager_out, eager = module_features(model, x, [f"{head}:input"])
    torch.testing.assert_close(out, eager_out)
    torch.testing.assert_close(features[f"{head}:input"], eager[f"{head}:input"])
    features[f"{head}:input"].pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in scripted.parameters())
    with pytest.raises(InvalidSpec, match="only the input of its final linear layer"):
        module_features(scripted, x, [head])


def test_a_model_without_a_linear_layer_has_no_head() -> None:
    assert (
        final_linear(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten()), torch.randn(2, 1, 5)) is None
    )
