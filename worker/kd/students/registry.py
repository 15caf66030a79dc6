"""Student architectures, by `arch` key: a registry of builders.

A builder takes (student spec, input shape without batch, class count) and returns a module
mapping (B, *input_shape) to logits (B, K). Every student must be `torch.jit.script`-able.

`arch: file` students are not built: they arrive as TorchScript files holding architecture
and initial weights, and the engine loads them with `load_file_student(path)` instead of
`build_student` (whose "file" entry only says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, TypeAdapter, ValidationError
from torch import nn

from worker.kd.errors import IncompatibleModels, InvalidSpec, fmt_shape, shorten
from worker.kd.spec import CNNStudent, FileStudent, MLPStudent, ResNetStudent, StudentSpec

StudentBuilder = Callable[[Any, tuple[int, ...], int], nn.Module]

STUDENTS: dict[str, StudentBuilder] = {}
STUDENT_SPEC: TypeAdapter[Any] = TypeAdapter(StudentSpec)
SPEC_CLASSES: dict[str, type[BaseModel]] = {
    "mlp": MLPStudent,
    "cnn": CNNStudent,
    "resnet": ResNetStudent,
    "file": FileStudent,
}


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


def parse_student_spec(raw: dict[str, Any], where: str = "student") -> Any:
    """A student spec (MLPStudent, CNNStudent, ...) from its dict, or InvalidSpec."""
    spec_class = SPEC_CLASSES.get(raw.get("arch"))  # type: ignore[arg-type]
    if spec_class is None:
        known = ", ".join(sorted(SPEC_CLASSES))
        raise InvalidSpec(f"{where}: unknown arch {raw.get('arch')!r}; known archs: {known}")
    try:
        return spec_class.model_validate(raw)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidSpec(f"{where}: {errors}") from exc


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


@register_student("resnet")
def build_resnet(spec: ResNetStudent, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise IncompatibleModels(
            f"The resnet student reads images (C, H, W), not samples of shape "
            f"{fmt_shape(input_shape)}. Reshape 'x' to (N, C, H, W), or use arch 'cnn' "
            "(sequences and images) or 'mlp' (any shape)."
        )
    return ResNet(input_shape[0], num_classes, depth=spec.depth, width=spec.width)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:  # 1x1 projection (option B of the paper)
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C', H', W')
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem, three stages of n basic
    blocks at widths w, 2w, 4w (the last two halve H and W), global average pooling, a linear
    head; depth 6n+2. Layers for feature losses: stem, layer1, layer2, layer3 (and their
    blocks, layer2.0, ...), pool, fc."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 8, width: int = 16):
        super().__init__()
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.layer1 = self._stage(width, width, blocks, stride=1)
        self.layer2 = self._stage(width, 2 * width, blocks, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, blocks, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, channels, stride)]
        layers += [BasicBlock(channels, channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, w, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 4w, H/4, W/4)
        return self.fc(torch.flatten(self.pool(x), 1))  # (B, K)


@register_student("file")
def build_file_student(spec: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    raise InvalidSpec(
        "An arch 'file' student is not built from the spec: it is the uploaded TorchScript "
        "file, loaded with load_file_student(path)."
    )


def load_file_student(
    path: Path, example: torch.Tensor | None = None, num_classes: int | None = None
) -> nn.Module:
    """The TorchScript student in `path`, trainable, on CPU, in train mode.

    Given a batch of dataset inputs `example` (B, *input_shape) and the teacher's class count,
    also checks that it maps the batch to logits (B, num_classes). Read by TorchScript's own
    loader: nothing is unpickled.
    """
    try:
        student = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise InvalidSpec(
            f"The student file is not a TorchScript module (torch.jit.load failed: "
            f"{shorten(exc)}). Save it with torch.jit.script(model).save('student.pt'); "
            "its weights are the starting point of training."
        ) from exc
    parameters = [p for p in student.parameters() if p.is_floating_point()]
    if not parameters:
        raise InvalidSpec("The student file has no floating-point parameters to train.")
    for parameter in parameters:
        parameter.requires_grad_(True)
    if example is not None and num_classes is not None:
        _check_file_student(student, example, num_classes)
    return student.train()


def _check_file_student(student: nn.Module, example: torch.Tensor, num_classes: int) -> None:
    student.eval()
    try:
        with torch.no_grad():
            out = student(example)
    except Exception as exc:
        raise IncompatibleModels(
            f"The student file failed on dataset inputs of shape {fmt_shape(example.shape)}: "
            f"{shorten(exc)}"
        ) from exc
    expected = (len(example), num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = fmt_shape(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise IncompatibleModels(
            f"The student file returned {got} on a batch of {len(example)}; it must return "
            f"logits {fmt_shape(expected)} for the teacher's {num_classes} classes."
        )
