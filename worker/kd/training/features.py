"""Intermediate outputs of eager modules, by module path, through forward hooks.

A layer is a module path as `named_modules()` spells it ("layer2", "features.3"); its
output is what that module's forward returns; `path:input` names what the module takes
instead (its first argument), so "fc:input" is the penultimate features a classifier head
`fc` reads. A module called more than once in a forward (a shared activation) gives its last
call's output. Gradients flow through the outputs, so a student's layers can be trained
against. TorchScript modules allow no hooks: of them only the input of a linear layer called
at the top level of `forward` can be read (`scripted_input_features` rewrites the inlined
graph to return it beside the logits); other layers are refused with a message that says
which formats give them.
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
# `path:input` names the input of module `path` rather than its output.
INPUT_SUFFIX = ":input"


def input_layer(module_path: str) -> str:
    """The layer name of what module `module_path` takes: "fc" -> "fc:input"."""
    return f"{module_path}{INPUT_SUFFIX}"


def split_layer(layer: str) -> tuple[str, bool]:
    """(module path, whether the layer is the module's input) of a layer name."""
    if layer.endswith(INPUT_SUFFIX):
        return layer.removesuffix(INPUT_SUFFIX), True
    return layer, False


def module_features(
    module: nn.Module, x: torch.Tensor, layers: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run `module` on `x` (B, *S); return its output (B, K) and `layers`' outputs by name,
    with gradients flowing through both."""
    if not layers:
        return module(x), {}
    if isinstance(module, torch.jit.ScriptModule):
        return scripted_input_features(module, x, layers)
    named = dict(module.named_modules())
    unknown = [name for name in layers if split_layer(name)[0] not in named or not name]
    if unknown:
        raise InvalidSpec(unknown_layer_message(unknown[0], [name for name in named if name]))
    captured: dict[str, object] = {}
    handles = []
    for name in dict.fromkeys(layers):
        path, is_input = split_layer(name)
        if is_input:
            handles.append(named[path].register_forward_pre_hook(_capture_input(captured, name)))
        else:
            handles.append(named[path].register_forward_hook(_capture(captured, name)))
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
            "hooks on its modules, only the input of its final linear layer (leave the layers "
            "out to pair the penultimate features). Other layers need a student from the "
            "registry (mlp, cnn, resnet) and a teacher given as a torch.export program (.pt2), "
            "an ONNX model, or safetensors weights with their arch."
        )


def final_linear(module: nn.Module, example: torch.Tensor) -> str | None:
    """The module path of the last linear layer `module`'s forward calls (its classifier
    head), from one pass on `example` in eval mode; None when it calls none."""
    if isinstance(module, torch.jit.ScriptModule):
        linears = _scripted_linears(module)
        return linears[-1][0] if linears else None
    called: list[str] = []
    handles = [
        sub.register_forward_hook(lambda *_, name=name: called.append(name))
        for name, sub in module.named_modules()
        if name and isinstance(sub, nn.Linear)
    ]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(example)
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return called[-1] if called else None


def scripted_input_features(
    module: torch.jit.ScriptModule, x: torch.Tensor, layers: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the inputs of linear layers of a TorchScript module, read by running a
    copy of its inlined graph that also returns them (gradients flow as in `module(x)`)."""
    linears = dict(_scripted_linears(module))
    for layer in layers:
        path, is_input = split_layer(layer)
        if not is_input or path not in linears:
            refuse_scripted(module, layer)
    names = list(dict.fromkeys(layers))
    graph = module.inlined_graph.copy()
    values = [linears[split_layer(name)[0]] for name in names]
    ret = graph.return_node()
    out = ret.inputsAt(0)
    inputs = [out, *(_graph_value(graph, index) for index in values)]
    pack = graph.create("prim::TupleConstruct", inputs, 1)
    pack.output().setType(torch._C.TupleType([value.type() for value in inputs]))
    graph.insertNode(pack)
    pack.moveBefore(ret)
    ret.replaceInputWith(out, pack.output())
    function = torch._C._create_function_from_graph("distillery_features", graph)
    logits, *features = function(module._c, x)
    return logits, dict(zip(names, features, strict=True))


def _scripted_linears(module: torch.jit.ScriptModule) -> list[tuple[str, int]]:
    """(module path, position of the node in the top block) of every `aten::linear` called
    at the top level of the inlined forward whose weight is a submodule's attribute."""
    found: list[tuple[str, int]] = []
    for index, node in enumerate(module.inlined_graph.nodes()):
        if node.kind() != "aten::linear":
            continue
        path = _attribute_path(node.inputsAt(1).node())
        if path is not None and path.endswith(".weight"):
            found.append((path.removesuffix(".weight"), index))
    return found


def _attribute_path(node: torch._C.Node) -> str | None:
    """The path "a.b.weight" of a chain of prim::GetAttr nodes that starts at `self`."""
    names: list[str] = []
    while node.kind() == "prim::GetAttr":
        names.append(node.s("name"))
        node = node.inputsAt(0).node()
    return ".".join(reversed(names)) if names and node.kind() == "prim::Param" else None


def _graph_value(graph: torch._C.Graph, index: int) -> torch._C.Value:
    """The input (first argument) of the node at `index` of the graph's top block."""
    return list(graph.nodes())[index].inputsAt(0)


def unknown_layer_message(layer: str, known: Sequence[str]) -> str:
    """'No layer named ...; the model's layers are: ...' with a bounded list."""
    listed = ", ".join(known[:LISTED_LAYERS]) or "none"
    more = f" and {len(known) - LISTED_LAYERS} more" if len(known) > LISTED_LAYERS else ""
    return f"No layer named {layer!r}; the model's layers are: {listed}{more}."


def _capture(captured: dict[str, object], name: str) -> Callable[[nn.Module, Any, Any], None]:
    def hook(_: nn.Module, __: Any, output: Any) -> None:
        captured[name] = output  # a later call of the same module overwrites an earlier one

    return hook


def _capture_input(
    captured: dict[str, object], name: str
) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        captured[name] = args[0] if args else None

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
