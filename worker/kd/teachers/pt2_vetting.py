"""Vetting an uploaded torch.export archive (.pt2) before `torch.export.load` reads it.

`torch.export.load` (torch 2.13) trusts its file. Read in its source:
  - weights and constants saved `use_pickle` (tensor subclasses), and the legacy
    `data/weights/<model>.pt` files, are loaded by torch with its full (unsafe) unpickler;
  - custom objects (`custom_obj_*`) through TorchScript's unpickler, opaque objects
    (`opaque_obj_*`) through `pickle.loads`;
  - sample inputs go through `torch.load(weights_only=True)` and, if that fails, again with
    `weights_only=False`;
  - `expr_str` strings reach `sympy.sympify`, which evaluates them as Python;
  - `guards_code` strings are `exec`uted when `.module()` builds the module;
  - files under `data/aotinductor/` are loaded as compiled shared libraries;
  - module paths are written into Python source that the module runs (`getattr(self, "…")`).

So only this subset is accepted, checked here first:
  - members: the archive's markers, `models/model.json`, raw `weight_N`/`tensor_N` payloads
    and their configs, `data/sample_inputs/model.pt`, `extra/*`; one root folder; stored,
    not compressed; nothing else (no AOTInductor code, no legacy pickled weights);
  - payload configs: no entry with `use_pickle`, no custom or opaque objects;
  - sample inputs: they load with `torch.load(weights_only=True)`, so torch's own first
    attempt succeeds and its `weights_only=False` fallback never runs;
  - model JSON: `guards_code` empty; every `expr_str` in a small sympy grammar (known
    function names, symbol names, numbers, operators); no other string holds a quote, a
    backslash or a control character (stack traces may hold newlines: they become
    one-line comments);
  - after loading (`vet_program`): every call in every graph is an ATen or prims operator,
    a higher-order operator, or an arithmetic builtin.
"""

from __future__ import annotations

import io
import json
import math
import operator
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from worker.kd.errors import InvalidTeacher, shorten

MODEL = "model"  # torch.export.save writes one program under this name; load returns it
MEMBER_PATTERNS = [
    re.compile(pattern)
    for pattern in (
        r"archive_format",
        r"archive_version",
        r"byteorder",
        r"\.data/version",
        r"\.data/serialization_id",
        rf"models/{MODEL}\.json",
        rf"data/weights/{MODEL}_weights_config\.json",
        r"data/weights/weight_\d+",
        rf"data/constants/{MODEL}_constants_config\.json",
        r"data/constants/tensor_\d+",
        rf"data/sample_inputs/{MODEL}\.pt",
        r"extra/[A-Za-z0-9_.\-]+",
    )
]
PAYLOAD_CONFIGS = {
    f"data/weights/{MODEL}_weights_config.json": "weight_",
    f"data/constants/{MODEL}_constants_config.json": "tensor_",
}

# sympy's names that torch's deserializer uses, and those it gives expressions itself.
SYMPY_NAMES = frozenset(
    {
        "Symbol", "Integer", "Float", "Rational", "Abs", "Add", "Mul", "Pow", "Max", "Min",
        "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "oo", "zoo", "nan",
        "floor", "ceiling", "sqrt", "True", "False", "positive", "negative", "nonnegative",
        "nonpositive", "integer", "real", "finite", "infinite", "zero", "nonzero", "even",
        "odd", "CeilDiv", "CeilToInt", "CleanDiv", "FloatPow", "FloatTrueDiv", "FloorDiv",
        "FloorToInt", "Identity", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "LShift",
        "Mod", "ModularIndexing", "PowByNatural", "PythonMod", "RShift", "RoundDecimal",
        "RoundToInt", "ToFloat", "TruncToFloat", "TruncToInt", "Where",
    }
)  # fmt: skip
SYMBOL_NAME = re.compile(r"[a-z]+\d+")
EXPR_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|'(?P<quoted>[a-z]+\d+)'"
    r"|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%(),<>=&|~]))"
)
UNSAFE_CHARACTER = re.compile(r'["\\\x00-\x1f\x7f]')
UNSAFE_IN_STACK_TRACE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # \t and \n are fine

ARITHMETIC = frozenset(
    {
        operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv,
        operator.truediv, operator.mod, operator.pow, operator.neg, operator.pos,
        operator.abs, operator.eq, operator.ne, operator.lt, operator.le, operator.gt,
        operator.ge, operator.and_, operator.or_, operator.not_, math.ceil, math.floor,
        math.sqrt, math.trunc, torch.sym_int, torch.sym_float, torch.sym_max, torch.sym_min,
        torch.sym_not, torch.sym_ite, torch.sym_sqrt, torch._check, torch._check_is_size,
    }
)  # fmt: skip
OPERATOR_NAMESPACES = frozenset({"aten", "prims"})
CONTROL_FLOW = frozenset(
    {"cond", "while_loop", "map_impl", "scan", "associative_scan", "wrap_with_set_grad_enabled",
     "wrap_with_autocast"}
)  # fmt: skip


def vet_archive(path: Path) -> None:
    """Raise InvalidTeacher unless the archive is in the subset described above."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(archive)
            for config, prefix in PAYLOAD_CONFIGS.items():
                _vet_payload_config(_json(archive, members, config), prefix)
            _vet_sample_inputs(archive.read(members[f"data/sample_inputs/{MODEL}.pt"]))
            _vet_model_json(_json(archive, members, f"models/{MODEL}.json"))
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, RecursionError) as exc:
        raise refusal(f"it could not be read ({shorten(exc)})") from exc


def vet_program(program: torch.export.ExportedProgram) -> None:
    """Raise InvalidTeacher if any graph calls something other than tensor operators."""
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            if node.op != "call_function" or not _allowed_call(node.target):
                raise refusal(f"its graph calls {str(node.target)[:80]!r}")


def refusal(reason: str) -> InvalidTeacher:
    return InvalidTeacher(
        f"The torch.export program cannot be used: {reason}. Distillery reads programs made by "
        "torch.export.save(torch.export.export(model, (x,)), 'teacher.pt2') from plain tensor "
        "operators, without tensor subclasses, custom objects or AOTInductor code."
    )


def _members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Members by name below the archive's one root folder; all must be allowed and stored."""
    infos = archive.infolist()
    roots = {info.filename.split("/", 1)[0] for info in infos}
    if len(roots) != 1 or any("/" not in info.filename for info in infos):
        raise refusal("its files are not under one root folder")
    members = {info.filename.split("/", 1)[1]: info for info in infos}
    for name, info in members.items():
        if not any(pattern.fullmatch(name) for pattern in MEMBER_PATTERNS):
            raise refusal(f"it holds {name!r}, which is not part of a plain exported program")
        if info.compress_type != zipfile.ZIP_STORED:
            raise refusal(f"{name!r} is compressed; torch.export.save stores files as they are")
    for name in (f"models/{MODEL}.json", f"data/sample_inputs/{MODEL}.pt", *PAYLOAD_CONFIGS):
        if name not in members:
            raise refusal(f"{name!r} is missing")
    return members


def _json(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], name: str) -> Any:
    try:
        return json.loads(archive.read(members[name]))
    except ValueError as exc:
        raise refusal(f"{name!r} is not JSON ({shorten(exc)})") from exc


def _vet_payload_config(config: Any, prefix: str) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise refusal("a payload config has no 'config' table")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise refusal(f"{fqn!r} is saved as a pickle (a tensor subclass or custom object)")
        if not re.fullmatch(rf"{prefix}\d+", str(meta.get("path_name"))):
            raise refusal(f"{fqn!r} is not a plain tensor")
        _vet_strings(fqn, "")


def _vet_sample_inputs(data: bytes) -> None:
    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise refusal(f"its sample inputs are not plain tensors ({shorten(exc, 120)})") from exc


def _vet_model_json(model: Any) -> None:
    if not isinstance(model, dict):
        raise refusal("models/model.json is not an exported program")
    if model.get("guards_code"):
        raise refusal("it carries guard code, which would run as Python")
    for key, value in _strings(model):
        if key == "expr_str":
            _vet_expression(value)
        elif key == "stack_trace":
            if UNSAFE_IN_STACK_TRACE.search(value):
                raise refusal("a stack trace holds control characters")
        elif key in ("in_spec", "out_spec"):
            for inner_key, inner in _strings(json.loads(value)):
                _vet_strings(inner_key, inner)
        else:
            _vet_strings(key, value)


def _strings(document: Any) -> Iterator[tuple[str, str]]:
    """(key, string) for every string value in a JSON document, and ("", key) for its keys;
    iterative, so deep nesting cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, str):
            yield key, value
        elif isinstance(value, dict):
            for child_key, child in value.items():
                yield "", child_key
                stack.append((child_key, child))
        elif isinstance(value, list):
            stack.extend((key, child) for child in value)


def _vet_strings(*values: str) -> None:
    for value in values:
        if UNSAFE_CHARACTER.search(value):
            raise refusal(f"a name holds a quote, backslash or control character: {value[:60]!r}")


def _vet_expression(expression: str) -> None:
    """Symbolic shapes are parsed by sympy, which evaluates them: allow arithmetic only."""
    position = 0
    while position < len(expression.rstrip()):
        token = EXPR_TOKEN.match(expression, position)
        if token is None:
            raise refusal(f"a symbolic shape is not arithmetic: {expression[:80]!r}")
        name = token.group("name")
        if name is not None and name not in SYMPY_NAMES and not SYMBOL_NAME.fullmatch(name):
            raise refusal(f"a symbolic shape uses the unknown name {name!r}")
        position = token.end()


def _allowed_call(target: Any) -> bool:
    if isinstance(target, torch._ops.OpOverload):
        return target.namespace in OPERATOR_NAMESPACES
    if isinstance(target, torch._ops.HigherOrderOperator):
        return target.name() in CONTROL_FLOW
    try:
        return target in ARITHMETIC
    except TypeError:  # unhashable
        return False
