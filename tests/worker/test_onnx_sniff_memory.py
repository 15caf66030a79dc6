"""A large ONNX teacher is recognised without reading its weights (issue 15, item 4): the
sniff walks the protobuf's tags and skips payloads, so its memory does not grow with the
file."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper

from tests.memory import peak_growth

WEIGHT_BYTES = 200 * 1024 * 1024
RSS_BOUND_MB = 60


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, length: int) -> bytes:
    return _varint(number << 3 | 2) + _varint(length)


def write_large_onnx(path: Path) -> None:
    """A valid Identity model plus one WEIGHT_BYTES float initializer, streamed to disk."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph)
    graph_bytes = model.graph.SerializeToString()
    model.ClearField("graph")
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[WEIGHT_BYTES // 4])
    head = tensor.SerializeToString()  # raw_data (field 9) is written after it, streamed
    tensor_length = len(head) + len(_field(9, WEIGHT_BYTES)) + WEIGHT_BYTES
    initializer = _field(5, tensor_length)
    graph_length = len(graph_bytes) + len(initializer) + tensor_length
    zeros = bytes(1024 * 1024)
    with path.open("wb") as handle:
        handle.write(model.SerializeToString())
        handle.write(_field(7, graph_length) + graph_bytes + initializer + head)
        handle.write(_field(9, WEIGHT_BYTES))
        for _ in range(WEIGHT_BYTES // len(zeros)):
            handle.write(zeros)


def test_a_large_onnx_teacher_is_sniffed_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.onnx"
    write_large_onnx(path)
    grew_mb, result = peak_growth(
        "from pathlib import Path\nfrom worker.kd.teachers.registry import sniff_format\n",
        f"sniff_format(Path({str(path)!r}))",
    )
    assert result == "'onnx'", result
    assert grew_mb < RSS_BOUND_MB, f"sniffing grew RSS by {grew_mb:.0f} MB"
