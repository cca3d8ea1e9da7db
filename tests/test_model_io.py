"""Loading and atomic, checked saving of models, with and without external data."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from models import build_samples
from se_onnx import SeOnnxError, load_model, save_model
from se_onnx.ir import model_io
from se_onnx.ir.naming import NameScope
from se_onnx.ir.se_block import SEWeights, build_se_block


def test_weights_past_the_protobuf_limit_go_to_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "_INLINE_WEIGHTS_LIMIT", 1024)
    output = tmp_path / "big.onnx"
    save_model(ir.from_proto(build_samples.resnet_like(opset=13)), output)
    assert (tmp_path / "big.onnx.data").is_file()
    assert load_model(output).graph.initializers


def test_inline_model_stays_inline(tmp_path):
    output = tmp_path / "small.onnx"
    save_model(ir.from_proto(build_samples.resnet_like(opset=13)), output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx"]


def test_a_model_failing_the_checker_writes_nothing(tmp_path):
    model = ir.from_proto(build_samples.resnet_like(opset=13))
    relu = next(node for node in model.graph if node.op_type == "Relu")
    relu.outputs[0].name = model.graph.inputs[0].name  # two producers of one name: invalid SSA
    output = tmp_path / "bad.onnx"
    with pytest.raises(SeOnnxError, match="fails onnx.checker, nothing was written"):
        save_model(model, output)
    assert list(tmp_path.iterdir()) == []


def test_missing_external_data_is_a_clear_error(tmp_path):
    path = tmp_path / "model.onnx"
    build_samples.save_with_external_data(build_samples.resnet_like(opset=13), path)
    for data in tmp_path.glob("*.data"):
        data.unlink()
    with pytest.raises(SeOnnxError, match="external data file .* which is missing"):
        load_model(path)


def test_atomic_output_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "weights.npz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), model_io.atomic_output(target) as staging:
        staging.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.npz"]


def test_bfloat16_blocks_get_bfloat16_weights():
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.BFLOAT16), shape=ir.Shape(["N", 4, 2, 2]))
    weights = SEWeights.random(4, 2, np.random.default_rng(0))
    built = build_se_block(x, weights, spatial_rank=2, opset=13, dtype=ir.DataType.BFLOAT16, names=NameScope(set()))
    float_initializers = [v for v in built.initializers if v.const_value.dtype.is_floating_point()]
    assert {v.const_value.dtype for v in float_initializers} == {ir.DataType.BFLOAT16}
    graph = ir.Graph(
        [x], [built.output], nodes=built.nodes, initializers=built.initializers, opset_imports={"": 13}, name="g"
    )
    onnx.checker.check_model(ir.to_proto(ir.Model(graph, ir_version=9)), full_check=True)


def test_text_file_is_not_a_model(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("hello")
    with pytest.raises(SeOnnxError, match="not a valid ONNX model"):
        load_model(path)


def test_empty_graph_is_refused(tmp_path):
    path = tmp_path / "empty.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "empty", [], [])), path)
    with pytest.raises(SeOnnxError, match="no graph"):
        load_model(path)


def test_written_models_get_the_umask_permissions(tmp_path):
    # Staged in a temporary file, the model must still end up readable as a plain write leaves it.
    model = ir.serde.deserialize_model(build_samples.tiny_conv())
    previous = os.umask(0o022)
    try:
        save_model(model, tmp_path / "model.onnx")
        (tmp_path / "plain.bin").write_bytes(b"")
    finally:
        os.umask(previous)
    assert (
        stat.S_IMODE((tmp_path / "model.onnx").stat().st_mode)
        == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)
        == 0o644
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "plain.bin"]
