"""Teachers in every format: the same logits and layers as the eager model they were made
from, and a readable refusal for anything else, without ever unpickling the upload."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from worker.kd.engine import prepare
from worker.kd.errors import IncompatibleModels, InvalidSpec, InvalidTeacher
from worker.kd.spec import CNNStudent, JobSpec, TeacherSpec
from worker.kd.students import build_student
from worker.kd.teachers import get_teacher_loader, load_teacher, probe_teacher, sniff_format
from worker.kd.teachers.inspection import inspect_teacher
from worker.kd.training.features import module_features

EXPORT_HINT = r"torch\.jit\.script\(model\)\.save"
SAMPLE = (3, 8, 8)
K = 5
ARCH = {"arch": "cnn", "channels": [4, 8], "hidden": 16}
FORMATS = ["torchscript", "torch_export", "onnx", "safetensors"]
BATCH = torch.export.Dim("batch")


@dataclass
class Made:
    """An eager model and the files of each format made from it."""

    model: nn.Module
    x: torch.Tensor  # (7, *SAMPLE)
    paths: dict[str, Path]

    def spec(self, fmt: str) -> TeacherSpec | str:
        if fmt == "safetensors":
            return TeacherSpec(file_id="file_teacher", **ARCH)
        return "auto"


def eager_teacher() -> nn.Module:
    """A small CNN from the registry, with batch-norm statistics that are not the defaults."""
    torch.manual_seed(0)
    model = build_student(CNNStudent.model_validate(ARCH), SAMPLE, K)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *SAMPLE) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    directory = tmp_path_factory.mktemp("teachers")
    model, x = eager_teacher(), torch.randn(7, *SAMPLE)
    paths = {
        "torchscript": directory / "teacher.pt",
        "torch_export": directory / "teacher.pt2",
        "onnx": directory / "teacher.onnx",
        "safetensors": directory / "teacher.safetensors",
    }
    torch.jit.script(model).save(str(paths["torchscript"]))
    program = torch.export.export(model, (x,), dynamic_shapes=({0: BATCH},))
    torch.export.save(program, str(paths["torch_export"]))
    torch.onnx.export(
        model, (x,), str(paths["onnx"]), dynamic_shapes=({0: BATCH},), external_data=False
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, paths["safetensors"])
    return Made(model, x, paths)


def write_bytes(tmp_path: Path, content: bytes, name: str = "teacher.pt") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def scripted(tmp_path: Path, module: nn.Module) -> Path:
    path = tmp_path / "teacher.pt"
    torch.jit.script(module).save(str(path))
    return path


# --- every format: the eager model's logits and layers -------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_sniffed_and_gives_the_eager_logits(made: Made, fmt: str) -> None:
    assert sniff_format(made.paths[fmt]) == fmt
    teacher = load_teacher(made.paths[fmt], made.spec(fmt), made.x)
    assert teacher.format == fmt
    assert not teacher.training
    for batch in (made.x, made.x[:1]):
        logits = teacher(batch)
        assert logits.shape == (len(batch), K)
        assert not logits.requires_grad
        torch.testing.assert_close(logits, made.model(batch), atol=1e-5, rtol=0)
    assert probe_teacher(teacher, made.x[:2]) == K


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export", "onnx"])
def test_a_declared_format_is_used_as_declared(made: Made, fmt: str) -> None:
    spec = TeacherSpec(file_id="file_teacher", format=fmt)  # type: ignore[arg-type]
    torch.testing.assert_close(
        load_teacher(made.paths[fmt], spec)(made.x), made.model(made.x), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameter_count_for_every_format(made: Made, fmt: str) -> None:
    eager = sum(p.numel() for p in made.model.parameters())
    count = load_teacher(made.paths[fmt], made.spec(fmt), made.x).num_parameters
    if fmt == "onnx":  # batch norms are folded into the convolutions before them
        assert 0 < count < eager
    else:
        assert count == eager


@pytest.mark.parametrize("fmt", ["torch_export", "safetensors"])
def test_module_path_layers_match_hooks_on_the_eager_model(made: Made, fmt: str) -> None:
    layers = ["2", "6", "10"]  # first and second ReLU, the dense layer's ReLU
    teacher = load_teacher(made.paths[fmt], made.spec(fmt), made.x)
    logits, features = teacher.features(made.x, layers)
    eager_logits, eager_features = module_features(made.model, made.x, layers)
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=0)
    for layer in layers:
        torch.testing.assert_close(features[layer], eager_features[layer], atol=1e-5, rtol=0)
    shapes = dict(teacher.layers(made.x[:1]))
    assert shapes["2"] == (4, 8, 8) and shapes["6"] == (8, 4, 4) and shapes["10"] == (16,)


def test_onnx_layers_are_node_outputs_matching_the_eager_model(made: Made) -> None:
    graph = onnx.load_model(str(made.paths["onnx"])).graph
    relus = [node.output[0] for node in graph.node if node.op_type == "Relu"]
    teacher = load_teacher(made.paths["onnx"])
    logits, features = teacher.features(made.x, relus[:2])
    _, eager_features = module_features(made.model, made.x, ["2", "6"])
    torch.testing.assert_close(logits, made.model(made.x), atol=1e-5, rtol=0)
    torch.testing.assert_close(features[relus[0]], eager_features["2"], atol=1e-5, rtol=0)
    torch.testing.assert_close(features[relus[1]], eager_features["6"], atol=1e-5, rtol=0)
    shapes = dict(teacher.layers(made.x[:1]))
    assert shapes[relus[0]] == (4, 8, 8) and shapes[relus[1]] == (8, 4, 4)


def test_torchscript_teacher_says_which_formats_give_layers(made: Made) -> None:
    teacher = load_teacher(made.paths["torchscript"])
    assert teacher.layers(made.x) == []
    with pytest.raises(InvalidSpec, match=r"'2'.*torch\.export program \(\.pt2\), an ONNX model"):
        teacher.features(made.x, ["2"])
    logits, features = teacher.features(made.x, [])
    assert features == {} and logits.shape == (7, K)


@pytest.mark.parametrize("fmt", ["torch_export", "onnx", "safetensors"])
def test_unknown_teacher_layer_lists_the_known_ones(made: Made, fmt: str) -> None:
    teacher = load_teacher(made.paths[fmt], made.spec(fmt), made.x)
    with pytest.raises(InvalidSpec, match=r"No layer named 'layer9'; the model's layers are: \w"):
        teacher.features(made.x, ["layer9"])


# --- refusals -------------------------------------------------------------------------------


def test_pickle_file_is_refused_without_being_loaded(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(InvalidTeacher, match=rf"not a TorchScript module.*pickle.*{EXPORT_HINT}"):
        load_teacher(path)


@pytest.mark.parametrize("content", [b"\x00garbage" * 100, os.urandom(4096), b""])
def test_garbage_bytes_are_refused(tmp_path: Path, content: bytes) -> None:
    path = write_bytes(tmp_path, content)
    with pytest.raises(InvalidTeacher, match="not a TorchScript module") as caught:
        load_teacher(path)
    assert caught.value.code == "invalid_teacher"
    assert len(caught.value.message) < 600


def test_torch_save_checkpoint_is_not_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    torch.save(nn.Linear(64, 10).state_dict(), path)
    with pytest.raises(InvalidTeacher, match=r"zip archive, perhaps a torch\.save checkpoint"):
        load_teacher(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files_are_refused(made: Made, fmt: str, tmp_path: Path) -> None:
    content = made.paths[fmt].read_bytes()
    path = write_bytes(tmp_path, content[: len(content) // 2], made.paths[fmt].name)
    with pytest.raises(InvalidTeacher) as caught:
        load_teacher(path, made.spec(fmt), made.x)
    assert "Traceback" not in caught.value.message
    assert len(caught.value.message) < 700


def test_a_file_that_is_not_the_declared_format(made: Made) -> None:
    with pytest.raises(InvalidTeacher, match="not an ONNX model; it is a zip archive"):
        load_teacher(made.paths["torchscript"], "onnx")


def test_teacher_that_fails_on_dataset_inputs(
    tmp_path: Path, digits_npz: Path, make_spec: Callable[..., JobSpec]
) -> None:
    path = scripted(tmp_path, nn.Linear(32, 10))
    with pytest.raises(
        IncompatibleModels, match=r"failed on a batch of 2 .* shape \(2, 64\)"
    ) as caught:
        prepare(make_spec(), path, digits_npz)
    assert caught.value.code == "incompatible_models"
    message = caught.value.message
    assert "samples shaped (64,)" in message
    assert "mat1 and mat2 shapes cannot be multiplied (2x64 and 32x10)" in message
    assert (
        "The teacher expects samples shaped (32,) (its first layer, a Linear, takes 32" in message
    )
    assert "Traceback" not in message


def test_conv_teacher_on_flat_inputs_says_what_it_expects(
    tmp_path: Path, digits_npz: Path, make_spec: Callable[..., JobSpec]
) -> None:
    """The useful part of a TorchScript error is its last line, after the traceback."""
    conv = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    with pytest.raises(IncompatibleModels) as caught:
        prepare(make_spec(), scripted(tmp_path, conv), digits_npz)
    message = caught.value.message
    assert "input to conv2d, but got input of size: [2, 64]" in message
    assert "expects samples shaped (1, H, W) (its first layer, a Conv2d" in message


class ReturnsTuple(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class ReturnsVector(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1)  # (B,)


class ReturnsIntegers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :10].long()  # (B, 10)


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (ReturnsTuple(), "returned a tuple"),
        (ReturnsVector(), r"returned shape \(2,\)"),
        (ReturnsIntegers(), "returned dtype torch.int64"),
    ],
)
def test_teacher_must_return_float_logits(module: nn.Module, match: str, tmp_path: Path) -> None:
    teacher = load_teacher(scripted(tmp_path, module))
    with pytest.raises(InvalidTeacher, match=match):
        probe_teacher(teacher, torch.randn(2, 64))


def test_probe_returns_class_count(teacher_path: Path) -> None:
    assert probe_teacher(load_teacher(teacher_path), torch.randn(2, 64)) == 10


def test_unknown_teacher_format_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known formats: hf_zip, onnx, safetensors, torch_export"):
        get_teacher_loader("tflite")


def test_static_batch_export_says_how_to_export(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt2"
    torch.export.save(torch.export.export(nn.Linear(4, 3), (torch.randn(2, 4),)), str(path))
    with pytest.raises(InvalidTeacher, match=r"batches of exactly 2 .*Dim\('batch'\)"):
        probe_teacher(load_teacher(path), torch.randn(3, 4))


def test_onnx_with_external_data_is_refused(made: Made, tmp_path: Path) -> None:
    model = onnx.load_model(str(made.paths["onnx"]))
    path = tmp_path / "teacher.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    with pytest.raises(InvalidTeacher, match=r"external data.*external_data=False"):
        load_teacher(path)


def test_safetensors_without_arch_asks_for_it(made: Made) -> None:
    with pytest.raises(InvalidSpec, match=r'"arch": "cnn"'):
        load_teacher(made.paths["safetensors"], "auto", made.x)


def test_safetensors_that_do_not_fit_the_arch(made: Made) -> None:
    spec = TeacherSpec(file_id="file_teacher", arch="cnn", channels=[4, 16], hidden=16)
    with pytest.raises(InvalidTeacher, match=r"4\.weight is \(8, 4, 3, 3\) in the file, \(16,"):
        load_teacher(made.paths["safetensors"], spec, made.x)


def test_safetensors_arch_fields_are_validated(made: Made) -> None:
    spec = TeacherSpec(file_id="file_teacher", arch="cnn", channels="wide")
    with pytest.raises(InvalidSpec, match="teacher: channels"):
        load_teacher(made.paths["safetensors"], spec, made.x)


# --- torch.export archives are vetted before torch.export.load reads them -------------------


class WritesAFileWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def rewrite_pt2(
    source: Path,
    target: Path,
    members: dict[str, bytes] | None = None,
    model: Callable[[str], str] | None = None,
    weights: Callable[[dict[str, dict[str, object]]], None] | None = None,
) -> Path:
    """A copy of a .pt2 archive with members replaced, added, or their JSON edited."""
    members = dict(members or {})
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        root = archive.namelist()[0].split("/", 1)[0]
        for info in archive.infolist():
            name = info.filename.split("/", 1)[1]
            data = members.pop(name, None) or archive.read(info)
            if name == "models/model.json" and model is not None:
                data = model(data.decode()).encode()
            if name.endswith("_weights_config.json") and weights is not None:
                config = json.loads(data)
                weights(config["config"])
                data = json.dumps(config).encode()
            out.writestr(info, data)
        for name, data in members.items():
            out.writestr(f"{root}/{name}", data)
    return target


def use_pickle(config: dict[str, dict[str, object]]) -> None:
    next(iter(config.values()))["use_pickle"] = True


def rename_module(text: str) -> str:
    return text.replace('"0.weight"', '"0\\").weight\\"\\"\\"; import os #"', 1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model": lambda t: t.replace("Symbol('s", "__import__('os') or Symbol('s", 1)},
         "symbolic shape uses the unknown name '__import__'"),
        ({"model": lambda t: json.dumps({**json.loads(t), "guards_code": ["True"]})},
         "guard code"),
        ({"weights": use_pickle}, "saved as a pickle"),
        ({"model": rename_module}, "quote, backslash"),
        ({"members": {"data/aotinductor/model/model.so": b"\x7fELF"}}, "aotinductor"),
        ({"members": {"data/weights/model.pt": b"\x80\x02N."}}, "data/weights/model.pt"),
    ],
    ids=["sympy-eval", "guards-exec", "pickled-weight", "module-path", "aoti", "legacy-weights"],
)  # fmt: skip
def test_unsafe_torch_export_archives_are_refused(
    made: Made, tmp_path: Path, change: dict[str, object], match: str
) -> None:
    path = rewrite_pt2(made.paths["torch_export"], tmp_path / "teacher.pt2", **change)
    with pytest.raises(InvalidTeacher, match=match):
        load_teacher(path)


def test_pickled_sample_inputs_are_never_unpickled(made: Made, tmp_path: Path) -> None:
    # torch.export.load retries sample inputs with weights_only=False when weights_only fails.
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(WritesAFileWhenUnpickled(marker))
    members = {"data/sample_inputs/model.pt": payload}
    path = rewrite_pt2(made.paths["torch_export"], tmp_path / "teacher.pt2", members=members)
    with pytest.raises(InvalidTeacher, match="sample inputs are not plain tensors"):
        load_teacher(path)
    assert not marker.exists()


def test_the_unmodified_archive_passes_the_vetting(made: Made, tmp_path: Path) -> None:
    path = rewrite_pt2(made.paths["torch_export"], tmp_path / "copy.pt2")
    torch.testing.assert_close(load_teacher(path)(made.x), made.model(made.x), atol=1e-5, rtol=0)


# --- inspection: what an uploaded teacher file's details show ------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_teacher_with_the_data_shape(made: Made, fmt: str) -> None:
    details = inspect_teacher(made.paths[fmt], made.spec(fmt), SAMPLE)
    assert details["format"] == fmt
    assert details["input_shape"] == list(SAMPLE)
    assert details["outputs"] == 1
    assert details["num_classes"] == K
    assert details["parameters"] > 0
    names = [layer["name"] for layer in details["layers"]]
    if fmt in ("torchscript", "safetensors"):  # the head's input, for automatic pairing
        assert details["penultimate"]["name"].endswith(":input")
        assert len(details["penultimate"]["shape"]) == 1
    else:
        assert "penultimate" not in details
    if fmt == "torchscript":
        assert names == [] and "no layers" in details["note"]
    elif fmt == "onnx":
        assert {"name": "relu", "shape": [4, 8, 8]} in details["layers"]
    else:
        assert {"name": "2", "shape": [4, 8, 8]} in details["layers"]
    json.dumps(details)


@pytest.mark.parametrize("fmt", ["torch_export", "onnx"])
def test_inspect_teacher_reads_the_shape_the_file_records(made: Made, fmt: str) -> None:
    details = inspect_teacher(made.paths[fmt])
    assert details["input_shape"] == list(SAMPLE)
    assert details["num_classes"] == K and details["layers"]


def test_inspect_safetensors_before_a_job_names_the_arch(made: Made) -> None:
    details = inspect_teacher(made.paths["safetensors"])
    eager = sum(p.numel() for p in made.model.parameters())
    assert details["format"] == "safetensors"
    assert details["parameters"] == eager
    assert details["tensors"] == len(made.model.state_dict())
    assert details["layers"] == [] and "arch" in details["note"]


def test_inspect_torchscript_without_a_shape(made: Made) -> None:
    details = inspect_teacher(made.paths["torchscript"])
    assert details["input_shape"] is None and details["num_classes"] is None


def test_inspect_refuses_what_load_refuses(tmp_path: Path) -> None:
    with pytest.raises(InvalidTeacher, match="TorchScript"):
        inspect_teacher(write_bytes(tmp_path, pickle.dumps([1])))
