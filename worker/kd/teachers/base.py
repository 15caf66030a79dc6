"""What every teacher is, whatever its file format: a frozen module from inputs to logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from worker.kd.errors import IncompatibleModels, InvalidSpec, InvalidTeacher, fmt_shape, shorten
from worker.kd.training.features import LayerShapes, split_layer, unknown_layer_message

Features = dict[str, torch.Tensor]

# One sentence for every refusal: the ways a teacher can be exported that Distillery reads.
EXPORT_HINT = (
    "Export it with torch.jit.script(model).save('teacher.pt'), torch.export.save("
    "torch.export.export(model, (x,)), 'teacher.pt2'), torch.onnx.export(model, (x,), "
    "'teacher.onnx'), or save_file(model.state_dict(), 'teacher.safetensors') naming its arch."
)
LAYER_FORMATS = "a torch.export program (.pt2), an ONNX model, or safetensors weights with an arch"


class Teacher(nn.Module):
    """A frozen teacher: `teacher(x)` maps (B, *input_shape) to logits (B, K).

    Every format gives the same interface:
        teacher(x) -> logits (B, K)
        teacher.features(x, layers) -> (logits, {layer: output (B, ...)})
        teacher.layers(example) -> [(layer, per-sample output shape)]
        teacher.num_parameters, .input_shape, .fixed_batch, .num_outputs, .example_input()
    and `.to(device)`, `.eval()` as any module. Teachers never train: `train()` only sets the
    flag, the formats run in inference form, and outputs carry no gradient (computed under
    `no_grad`, not `inference_mode`, so losses may save them for the student's backward).
    """

    format: ClassVar[str]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, Features]:
        """Logits (B, K) and the outputs of `layers` (names from `layers()`) on `x`."""
        if not layers:
            return self(x), {}
        raise InvalidSpec(
            f"The {self.format} teacher cannot give layer outputs (asked for "
            f"{', '.join(map(repr, layers))}); feature and relation losses need {LAYER_FORMATS}."
        )

    def layers(self, example: torch.Tensor) -> LayerShapes:
        """Named layers and their per-sample output shapes, from one pass on `example`."""
        return []

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        """A sample's shape (batch excluded) where the file records it; None for unknown dims."""
        return None

    @property
    def fixed_batch(self) -> int | None:
        """The one batch size the file accepts, if it was exported for one; else None."""
        return None

    @property
    def num_outputs(self) -> int | None:
        """How many outputs the file declares (logits are the first); None if it does not say."""
        return None

    def example_input(self) -> torch.Tensor | None:
        """An input batch the file carries (torch.export programs), else None."""
        return None

    def train(self, mode: bool = True) -> Teacher:
        self.training = mode  # the wrapped model stays in inference form
        return self

    def _check_layers(self, layers: Sequence[str], known: Sequence[str]) -> None:
        known_set = set(known)
        for layer in layers:  # "path:input" names the input of module `path`
            if layer not in known_set and split_layer(layer)[0] not in known_set:
                raise InvalidSpec(f"Teacher: {unknown_layer_message(layer, list(known))}")


def freeze(module: nn.Module) -> nn.Module:
    """No gradients for the teacher's weights."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def probe_teacher(teacher: nn.Module, sample: torch.Tensor) -> int:
    """Run the teacher on a small batch; return its class count K or raise InvalidTeacher."""
    batch = len(sample)
    try:
        with torch.no_grad():
            out = teacher(sample)  # (B, K) expected
    except InvalidTeacher:
        raise
    except Exception as exc:
        expects = expected_input(teacher)
        wanted = (
            f"The teacher expects samples shaped {expects}"
            if expects
            else "It must accept inputs shaped like the dataset's 'x' (with a leading batch "
            "dimension) and return logits (B, K)"
        )
        raise IncompatibleModels(
            f"The teacher failed on a batch of {batch} dataset inputs of shape "
            f"{fmt_shape(sample.shape)} (samples shaped {fmt_shape(sample.shape[1:])}): "
            f"{_last_line(exc)}. {wanted}; reshape the dataset's 'x' to fit, or use the "
            "teacher trained on these inputs."
        ) from exc
    return check_logits(out, batch)


def _last_line(exc: BaseException) -> str:
    """The error itself: TorchScript puts it on the last line, after its own traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return shorten(RuntimeError(lines[-1] if lines else type(exc).__name__), 300).rstrip(".")


# The layer types whose weight shape tells what one input sample must look like.
_INPUT_LAYERS = {"Linear": "({0},)", "Conv1d": "({0}, L)", "Conv2d": "({0}, H, W)"}


def expected_input(teacher: nn.Module) -> str | None:
    """What the teacher's first linear or convolution layer takes, e.g. `(1, H, W) (its
    first layer, a Conv2d, takes 1 input channel)`; None when it cannot be told."""
    for module in teacher.modules():
        kind = getattr(module, "original_name", type(module).__name__)
        weight = getattr(module, "weight", None)
        if kind in _INPUT_LAYERS and isinstance(weight, torch.Tensor) and weight.ndim >= 2:
            width = int(weight.shape[1])
            unit = "features" if kind == "Linear" else "input channels"
            return (
                f"{_INPUT_LAYERS[kind].format(width)} (its first layer, a {kind}, "
                f"takes {width} {unit})"
            )
    return None


def check_logits(out: object, batch: int) -> int:
    """K, if `out` is float logits (batch, K) with K >= 2 and finite; else InvalidTeacher."""
    expected = f"It must return one float tensor of logits shaped ({batch}, K), K >= 2."
    if not isinstance(out, torch.Tensor):
        raise InvalidTeacher(f"The teacher returned a {type(out).__name__}. {expected}")
    if out.ndim != 2 or out.shape[0] != batch or out.shape[1] < 2:
        raise InvalidTeacher(f"The teacher returned shape {fmt_shape(out.shape)}. {expected}")
    if not out.is_floating_point():
        raise InvalidTeacher(f"The teacher returned dtype {out.dtype}. {expected}")
    if not torch.isfinite(out).all():
        raise InvalidTeacher("The teacher returned NaN or infinite logits on dataset inputs.")
    return int(out.shape[1])
