"""Intermediate outputs of eager modules, by module path, through forward hooks.

A layer is a module path as `named_modules()` spells it ("layer2", "features.3"); its
output is what that module's forward returns. A module called more than once in a forward
(a shared activation) gives its last call's output. Gradients flow through the outputs, so
a student's layers can be trained against. TorchScript modules allow no hooks, so they give
no layers: `module_features` refuses them with a message that says what does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from worker.kd.errors import InvalidSpec

LayerShapes = list[tuple[str, tuple[int, ...]]]

# How many layer names an error message lists before it says "and N more".
LISTED_LAYERS = 40


def module_features(
    module: nn.Module, x: torch.Tensor, layers: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run `module` on `x` (B, *S); return its output (B, K) and `layers`' outputs by name,
    with gradients flowing through both."""
    if not layers:
        return module(x), {}
    refuse_scripted(module, layers[0])
    named = dict(module.named_modules())
    unknown = [name for name in layers if name not in named or not name]
    if unknown:
        raise InvalidSpec(unknown_layer_message(unknown[0], [name for name in named if name]))
    captured: dict[str, object] = {}
    handles = [named[name].register_forward_hook(_capture(captured, name)) for name in layers]
    try:
        out = module(x)  # (B, K)
    finally:
        for handle in handles:
            handle.remove()
    return out, {name: _one_tensor(name, captured.get(name)) for name in dict.fromkeys(layers)}


def describe_layers(module: nn.Module, example: torch.Tensor) -> LayerShapes:
    """Every named submodule that returns one tensor, with its per-sample output shape
    (batch dim excluded), in `named_modules()` order; from one pass on `example` in eval mode,
    without gradients. Empty for TorchScript modules (no hooks)."""
    if isinstance(module, torch.jit.ScriptModule):
        return []
    named = [(name, sub) for name, sub in module.named_modules() if name]
    captured: dict[str, object] = {}
    handles = [sub.register_forward_hook(_capture(captured, name)) for name, sub in named]
    was_training = module.training
    module.eval()  # no running-statistics updates, and batch-1 examples work with batch norm
    try:
        with torch.no_grad():
            module(example)
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return [
        (name, tuple(int(d) for d in out.shape[1:]))
        for name, _ in named
        if isinstance(out := captured.get(name), torch.Tensor) and out.ndim >= 1
    ]


def refuse_scripted(module: nn.Module, layer: str) -> None:
    """TorchScript forbids forward hooks: say so, and what can give layers instead."""
    if isinstance(module, torch.jit.ScriptModule):
        raise InvalidSpec(
            f"Layer {layer!r} cannot be read from a TorchScript model: TorchScript allows no "
            "hooks on its modules. Feature and relation losses need a student from the "
            "registry (mlp, cnn, resnet) and a teacher given as a torch.export program (.pt2), "
            "an ONNX model, or safetensors weights with their arch."
        )


def unknown_layer_message(layer: str, known: Sequence[str]) -> str:
    """'No layer named ...; the model's layers are: ...' with a bounded list."""
    listed = ", ".join(known[:LISTED_LAYERS]) or "none"
    more = f" and {len(known) - LISTED_LAYERS} more" if len(known) > LISTED_LAYERS else ""
    return f"No layer named {layer!r}; the model's layers are: {listed}{more}."


def _capture(captured: dict[str, object], name: str) -> Callable[[nn.Module, Any, Any], None]:
    def hook(_: nn.Module, __: Any, output: Any) -> None:
        captured[name] = output  # a later call of the same module overwrites an earlier one

    return hook


def _one_tensor(name: str, output: object) -> torch.Tensor:
    if output is None:
        raise InvalidSpec(
            f"Layer {name!r} was not called when the model ran, so it has no output; "
            "name a module that its forward uses."
        )
    if not isinstance(output, torch.Tensor):
        raise InvalidSpec(
            f"Layer {name!r} returns a {type(output).__name__}, not one tensor; name a module "
            "whose forward returns a tensor (for example a submodule of it)."
        )
    return output
