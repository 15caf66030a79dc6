"""Student architectures, by `arch` key: a registry of builders.

A builder takes (student spec, input shape without batch, class count) and returns a module
mapping (B, *input_shape) to logits (B, K). Every student must be `torch.jit.script`-able.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from worker.kd.errors import IncompatibleModels
from worker.kd.spec import CNNStudent, MLPStudent
from worker.kd.text import fmt_shape

StudentBuilder = Callable[[Any, tuple[int, ...], int], nn.Module]

STUDENTS: dict[str, StudentBuilder] = {}


def register_student(name: str) -> Callable[[StudentBuilder], StudentBuilder]:
    def register(builder: StudentBuilder) -> StudentBuilder:
        STUDENTS[name] = builder
        return builder

    return register


def get_student(name: str) -> StudentBuilder:
    if name not in STUDENTS:
        raise ValueError(
            f"No student arch {name!r} registered; known archs: {', '.join(sorted(STUDENTS))}"
        )
    return STUDENTS[name]


def build_student(spec: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The registered builder for `spec.arch`, applied to the data's shapes."""
    return get_student(spec.arch)(spec, input_shape, num_classes)


@register_student("mlp")
def build_mlp(spec: MLPStudent, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden in spec.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        layers += [nn.Dropout(spec.dropout)] if spec.dropout > 0 else []
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class AddChannel(nn.Module):
    """(B, *S) -> (B, 1, *S): a one-channel view for convolutions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1)


def cnn_layout(
    input_shape: tuple[int, ...], layout: str = "auto"
) -> tuple[int, tuple[int, ...], bool]:
    """(conv dims, channels-first shape (C, *S), whether a channel axis must be added).

    By rank: (L,) and (C, L) are sequences, (C, H, W) images; `layout="2d"` reads (H, W)
    as a one-channel image. Nothing is guessed from the sizes themselves.
    """
    rank = len(input_shape)
    if rank == 1 and layout != "2d":
        return 1, (1, *input_shape), True
    if rank == 2:
        if layout == "2d":
            return 2, (1, *input_shape), True
        return 1, input_shape, False
    if rank == 3 and layout != "1d":
        return 2, input_shape, False
    raise IncompatibleModels(
        f"The cnn student (layout {layout!r}) cannot read samples of shape "
        f"{fmt_shape(input_shape)}: it takes (L,) or (C, L) as sequences, (C, H, W) as images, "
        "and (H, W) as images with layout '2d'. Reshape 'x' or use arch 'mlp'."
    )


@register_student("cnn")
def build_cnn(spec: CNNStudent, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    dims, (channels, *spatial), add_channel = cnn_layout(input_shape, spec.layout)
    conv, norm, pool = (
        (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d)
        if dims == 1
        else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
    )
    layers: list[nn.Module] = [AddChannel()] if add_channel else []
    for width in spec.channels:
        layers += [conv(channels, width, spec.kernel_size, padding="same"), norm(width), nn.ReLU()]
        if min(spatial) >= 2:
            layers.append(pool(2))
            spatial = [size // 2 for size in spatial]
        channels = width
    pool_to_one = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
    layers += [pool_to_one, nn.Flatten(), nn.Linear(channels, spec.hidden), nn.ReLU()]
    layers += [nn.Dropout(spec.dropout)] if spec.dropout > 0 else []
    layers.append(nn.Linear(spec.hidden, num_classes))
    return nn.Sequential(*layers)
