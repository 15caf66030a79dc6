"""How many parameters a registry student (mlp, cnn, resnet) has, from its spec alone.

Torch-free, so the API can refuse an oversized student at submit time. Without the data's
sample shape and the teacher's class count it gives a lower bound (one input feature or
channel, one class, 1-D convolutions unless the layout says 2-D); with them it is the
exact count of the model `worker.kd.students` builds.
"""

from __future__ import annotations

import math
from itertools import pairwise

from worker.kd.spec import CNNStudent, MLPStudent, ResNetStudent

# fp32 weights, their gradients and AdamW's two moments: what training holds per parameter.
TRAINING_BYTES_PER_PARAMETER = 16


def student_parameters(
    student: object, input_shape: tuple[int, ...] | None = None, num_classes: int = 1
) -> int | None:
    """The parameter count (a lower bound when `input_shape` is None), or None for archs
    whose size is not in the spec (file, Hugging Face)."""
    if isinstance(student, MLPStudent):
        return _mlp(student, math.prod(input_shape) if input_shape else 1, num_classes)
    if isinstance(student, CNNStudent):
        return _cnn(student, input_shape, num_classes)
    if isinstance(student, ResNetStudent):
        channels = input_shape[0] if input_shape else 1
        return _resnet(student, channels, num_classes)
    return None


def _linear(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


def _mlp(spec: MLPStudent, features: int, classes: int) -> int:
    widths = [features, *spec.hidden, classes]
    return sum(_linear(a, b) for a, b in pairwise(widths))


def _cnn(spec: CNNStudent, input_shape: tuple[int, ...] | None, classes: int) -> int:
    if input_shape is None:
        dims, channels = (2 if spec.layout == "2d" else 1), 1
    else:
        rank = len(input_shape)
        dims = 2 if (rank == 3 and spec.layout != "1d") or spec.layout == "2d" else 1
        channels = input_shape[0] if rank in (2, 3) and spec.layout != "2d" else 1
    total = 0
    for width in spec.channels:  # conv with bias, then batch norm (weight and bias)
        total += channels * width * spec.kernel_size**dims + width + 2 * width
        channels = width
    return total + _linear(channels, spec.hidden) + _linear(spec.hidden, classes)


def _resnet(spec: ResNetStudent, in_channels: int, classes: int) -> int:
    width, blocks = spec.width, (spec.depth - 2) // 6

    def block(inputs: int, channels: int, projected: bool) -> int:
        convs = inputs * channels * 9 + channels * channels * 9 + 4 * channels
        return convs + (inputs * channels + 2 * channels if projected else 0)

    total = in_channels * width * 9 + 2 * width  # stem: conv without bias, batch norm
    for inputs, channels in ((width, width), (width, 2 * width), (2 * width, 4 * width)):
        total += block(inputs, channels, inputs != channels)
        total += (blocks - 1) * block(channels, channels, False)
    return total + _linear(4 * width, classes)


def too_large(count: int, limit: int, at_least: bool) -> str | None:
    """The sentence refusing a student of `count` parameters over `limit`, else None."""
    if count <= limit:
        return None
    gigabytes = count * TRAINING_BYTES_PER_PARAMETER / 1024**3
    return (
        f"The student has {'at least ' if at_least else ''}{count:,} parameters (about "
        f"{gigabytes:,.1f} GB to train: weights, gradients and optimizer state); this server "
        f"accepts at most {limit:,} (DISTILLERY_MAX_STUDENT_PARAMS). Make it narrower or "
        "shallower."
    )
