"""save_model's encoder: large initializers written straight from their tensors must decode to
exactly what onnx-ir would have serialized, field for field as protobuf itself writes them, leave
the model untouched, and stay checked. A change in onnx, onnx-ir or protobuf that breaks the
hand-built encoding fails here."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from google.protobuf import empty_pb2, unknown_fields
from onnx import TensorProto, helper, numpy_helper

from models import build_samples
from se_onnx import (
    InsertOptions,
    SeOnnxError,
    insert_se,
    load_model,
    save_model,
    verify,
)
from se_onnx.ir import model_io


def _saved(model: ir.Model, path) -> onnx.ModelProto:
    save_model(model, path)
    return onnx.load(path)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("build", [build_samples.resnet_like, build_samples.conv3d_model])
def test_written_model_decodes_to_onnx_ir_serialization(build, dtype, tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "_APPEND_MIN_BYTES", 64)  # the samples' weights are small
    source = tmp_path / "source.onnx"
    onnx.save(build(opset=13, dtype=dtype), source)
    model, _ = insert_se(load_model(source), InsertOptions(where="conv", init="random"))
    expected = ir.to_proto(model)
    assert _saved(model, tmp_path / "se.onnx") == expected
    assert sum(len(t.raw_data) >= 64 for t in expected.graph.initializer) >= 2
    assert verify(source, tmp_path / "se.onnx", rtol=1, atol=1e9).outputs  # ONNX Runtime loads and runs it


def test_every_kind_of_initializer_round_trips(tmp_path):
    big = np.arange(4096, dtype=np.float32).reshape(64, 64)
    float_data = helper.make_tensor("as_floats", TensorProto.FLOAT, [64, 64], big.ravel().tolist())  # not raw
    strings = helper.make_tensor("words", TensorProto.STRING, [2], [b"a", b"b"])
    shape = numpy_helper.from_array(np.array([1, 4096], dtype=np.int64), "shape")
    documented = numpy_helper.from_array(big + 1, "documented")
    documented.doc_string = "kept"
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "raw"], ["a"]),
            helper.make_node("Add", ["a", "as_floats"], ["b"]),
            helper.make_node("Add", ["b", "documented"], ["c"]),
            helper.make_node("Reshape", ["c", "shape"], ["y"]),
            helper.make_node("Identity", ["words"], ["w"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096]),
            helper.make_tensor_value_info("w", TensorProto.STRING, [2]),
        ],
        [numpy_helper.from_array(big, "raw"), float_data, strings, shape, documented],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model = ir.from_proto(proto)
    model.graph.initializers["raw"].const_value = ir.tensor(big * 2, name="raw")  # a numpy-backed tensor
    before = {name: value.const_value for name, value in model.graph.initializers.items()}

    saved = _saved(model, tmp_path / "kinds.onnx")

    assert saved == ir.to_proto(model)
    tensors = {t.name: t for t in saved.graph.initializer}
    assert np.array_equal(numpy_helper.to_array(tensors["raw"]), big * 2)
    assert tensors["as_floats"].float_data and not tensors["as_floats"].raw_data  # left to onnx-ir
    assert tensors["documented"].doc_string == "kept"
    assert list(tensors["words"].string_data) == [b"a", b"b"]
    after = {name: value.const_value for name, value in model.graph.initializers.items()}
    assert all(after[name] is tensor for name, tensor in before.items())  # the model is unchanged


def test_the_model_is_restored_when_serialization_fails(tmp_path, monkeypatch):
    model = ir.from_proto(build_samples.resnet_like(opset=13))
    before = {name: value.const_value for name, value in model.graph.initializers.items()}

    def broken(_model):
        raise RuntimeError("serializer failed")

    monkeypatch.setattr(model_io.ir, "to_proto", broken)
    with pytest.raises(RuntimeError, match="serializer failed"):
        save_model(model, tmp_path / "out.onnx")
    assert all(model.graph.initializers[name].const_value is tensor for name, tensor in before.items())
    assert list(tmp_path.iterdir()) == []


def test_the_checker_sees_the_written_bytes(tmp_path):
    # A weight whose data is shorter than its shape says: only a check of the encoded file sees it.
    model = ir.from_proto(build_samples.resnet_like(opset=13))
    value = max(model.graph.initializers.values(), key=lambda v: v.const_value.nbytes)
    truncated = ir.to_proto(value.const_value)
    truncated.raw_data = truncated.raw_data[:-4]
    value.const_value = ir.from_proto(truncated)
    with pytest.raises(SeOnnxError, match="fails onnx.checker, nothing was written: .*raw_data size"):
        save_model(model, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def _wire(encoded: bytes, descriptor) -> list[tuple]:
    """The fields protobuf reads off the wire, as (number, wire type, value), read without the schema
    and then, for the fields `descriptor` declares as messages, recursively with it. Fields keep
    their order within one field number (repeated fields are ordered), not across numbers (which
    protobuf ignores when it parses)."""
    message = empty_pb2.Empty()
    message.ParseFromString(encoded)
    fields = []
    for field in unknown_fields.UnknownFieldSet(message):
        declared = descriptor.fields_by_number.get(field.field_number)
        data = field.data
        if declared is not None and declared.message_type is not None:
            data = _wire(data, declared.message_type)
        fields.append((field.field_number, field.wire_type, data))
    return sorted(fields, key=lambda field: field[0])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("build", [build_samples.resnet_like, build_samples.conv3d_model])
def test_hand_built_bytes_are_protobuf_s_own_field_by_field(build, dtype, monkeypatch):
    monkeypatch.setattr(model_io, "_APPEND_MIN_BYTES", 64)  # the samples' weights are small
    model = ir.from_proto(build(opset=13, dtype=dtype))
    value = max(model.graph.initializers.values(), key=lambda v: v.const_value.nbytes)
    value.const_value = ir.tensor(value.const_value.numpy(), name=value.name)  # numpy-backed, as passes leave them
    hand_built = b"".join(bytes(piece) for piece in model_io._encode(model))
    serialized = ir.to_proto(model).SerializeToString()
    assert hand_built != serialized  # the graph and each raw_data moved to the end of their message
    assert _wire(hand_built, onnx.ModelProto.DESCRIPTOR) == _wire(serialized, onnx.ModelProto.DESCRIPTOR)


@pytest.mark.parametrize(
    "field, length, encoded",
    [(7, 0, b"\x3a\x00"), (5, 127, b"\x2a\x7f"), (9, 300, b"\x4a\xac\x02"), (7, 2**31, b"\x3a\x80\x80\x80\x80\x08")],
)
def test_field_keys_are_protobuf_varints(field, length, encoded):
    assert model_io._key(field, length) == encoded
