"""Every pass on TensorFlow-style NHWC islands, BatchNorm as Mul + Add, shared weights and QDQ models.

Each family goes through insert, find, fuse (canonical, function, conv), strip and export-weights;
each rewritten model passes the full checker and runs in ONNX Runtime against the original.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from exporter_layouts import (
    calibration_inputs,
    keras_se_model,
    shared_weight_model,
    tf_resnet,
)

from models import build_samples
from models.builders import quantize_qdq
from se_onnx import (
    InsertOptions,
    SeOnnxError,
    find_se,
    fuse_se,
    insert_se,
    strip_se,
    unfuse_se,
)
from se_onnx.passes.export_weights import export_se_weights
from se_onnx.passes.inspect import inspect_model
from se_onnx.runtime.sessions import make_session

pytest.importorskip("onnxruntime.quantization")


def _proto(model: ir.Model) -> onnx.ModelProto:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return make_session(model.SerializeToString()).run(None, feeds)[0]


def _close(a: onnx.ModelProto, b: onnx.ModelProto, *, atol: float = 1e-5) -> None:
    feeds = calibration_inputs(a, batches=1, batch=3, seed=7)[0]
    np.testing.assert_allclose(_run(a, feeds), _run(b, feeds), rtol=atol, atol=atol)


def _differ(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    feeds = calibration_inputs(a, batches=1, batch=3, seed=7)[0]
    assert not np.allclose(_run(a, feeds), _run(b, feeds), rtol=1e-3, atol=1e-3)


def _consumers(model: ir.Model, node_name: str) -> list[str]:
    node = next(n for n in model.graph if n.name == node_name)
    return [use.node.op_type for use in node.outputs[0].uses()]


def _node(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def _axes(node: ir.Node) -> list[int]:
    if "axes" in node.attributes:
        return list(node.attributes["axes"].value)
    return [int(a) for a in node.inputs[1].const_value.numpy()]


def _every_pass_on_inserted(
    original: onnx.ModelProto, with_se: ir.Model, blocks: int, where: str, *, atol: float = 1e-5
) -> None:
    """find, inspect, fuse, unfuse, strip and export-weights on a model that
    `insert_se(where=where)` gave random SE blocks; the exported weights, inserted into the
    original, give the same model back."""
    with_se_proto = _proto(with_se)
    found = find_se(with_se)
    assert len(found) == blocks == len(inspect_model(with_se).se_blocks)
    for form in ("canonical", "function"):
        fused, report = fuse_se(with_se, form=form)
        assert len(report.blocks) == blocks
        _close(_proto(fused), with_se_proto, atol=atol)
    unfused, _ = unfuse_se(fused)
    assert len(find_se(unfused)) == blocks
    _close(_proto(unfused), with_se_proto, atol=atol)
    _close(_proto(fuse_se(with_se, "conv")[0]), with_se_proto, atol=atol)
    stripped, report = strip_se(with_se)
    assert len(report.blocks) == blocks and not find_se(stripped)
    _close(_proto(stripped), original, atol=atol)
    weights = export_se_weights(with_se)
    assert len(weights) == 4 * blocks
    reinserted, _ = insert_se(ir.from_proto(original), InsertOptions(where=where, weights=weights))
    _close(_proto(reinserted), with_se_proto, atol=atol)


# --- tf2onnx's NHWC islands, and BatchNorm as Mul + Add --------------------------------------------


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_residual_blocks_go_before_the_residual_add_in_the_layer_layout(layout, opset):
    original = tf_resnet(opset=opset, layout=layout)
    model, report = insert_se(ir.from_proto(original), InsertOptions(where="residual"))
    _close(_proto(model), original)
    assert report.placement == "residual" and len(report.blocks) == 2
    for block in report.blocks:
        assert block.layout == layout.upper()
        expected = ("Transpose", "Mul", "Add") if layout == "nhwc" else ("Mul", "Add")
        assert block.through == expected
        assert block.position.startswith("before the residual Add")
        assert _consumers(model, block.nodes[-1]) == ["Add"]
        squeeze = _node(model, block.nodes[0])
        assert _axes(squeeze) == ([1, 2] if layout == "nhwc" else [2, 3])
    # No Transpose is added: the block runs in the island's own layout.
    count = [n.op_type for n in original.graph.node].count("Transpose")
    assert [n.op_type for n in model.graph].count("Transpose") == count


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_conv_placement_passes_bn_as_mul_add_and_the_activation(layout):
    original = tf_resnet(layout=layout)
    model, report = insert_se(ir.from_proto(original), InsertOptions(where="conv"))
    _close(_proto(model), original)
    assert len(report.blocks) == 6
    with_relu = [block for block in report.blocks if block.through[-1] == "Relu"]
    assert len(with_relu) == 3  # the convs before a residual Add have no activation of their own
    assert {block.layout for block in report.blocks} == {layout.upper()}


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_every_pass_on_random_blocks_in_tf_layouts(layout):
    original = tf_resnet(layout=layout)
    model, _ = insert_se(ir.from_proto(original), InsertOptions(where="residual", init="random", seed=1))
    _differ(_proto(model), original)
    _every_pass_on_inserted(original, model, blocks=2, where="residual")
    assert {block.layout for block in find_se(model)} == {layout.upper()}


def test_nhwc_insert_keeps_float16_outputs():
    original = tf_resnet(dtype="float16")
    model, report = insert_se(ir.from_proto(original), InsertOptions(where="residual"))
    assert report.dtype == "float16"
    _close(_proto(model), original, atol=1e-2)


def test_a_conv_output_read_twice_puts_the_block_right_after_the_conv():
    original = tf_resnet()
    conv = next(n for n in original.graph.node if n.op_type == "Conv")
    # A second reader of the conv's output: its layer cannot be followed into the NHWC island.
    original.graph.output.append(
        onnx.helper.make_tensor_value_info(conv.output[0], onnx.TensorProto.FLOAT, ["N", 8, 8, 8])
    )
    model, report = insert_se(ir.from_proto(original), InsertOptions(where="conv", nodes=(conv.name,)))
    (block,) = report.blocks
    assert block.through == () and block.layout == "NCHW" and block.position.startswith("right after the Conv")
    feeds = calibration_inputs(original, batches=1)[0]
    for a, b in zip(
        make_session(original.SerializeToString()).run(None, feeds),
        make_session(_proto(model).SerializeToString()).run(None, feeds),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# --- One weight shared by several convs ------------------------------------------------------------


def test_shared_weight_gives_each_conv_its_own_block():
    original = shared_weight_model()
    model, report = insert_se(ir.from_proto(original), InsertOptions(where="conv", init="random"))
    assert len(report.blocks) == 4 and len({block.name for block in report.blocks}) == 4
    shared = next(v for v in model.graph.initializers.values() if len(v.uses()) == 3)
    assert shared.shape == ir.Shape([8, 8, 3, 3])  # still one weight, read by all three convs
    se_weights = [name for name in model.graph.initializers if "/se/fc1_weight" in name]
    assert len(se_weights) == 4
    _every_pass_on_inserted(original, model, blocks=4, where="conv")
    identity, _ = insert_se(ir.from_proto(original), InsertOptions(where="residual"))
    _close(_proto(identity), original)


# --- SE blocks written in NHWC (Keras' squeeze-excite through tf2onnx) ------------------------------


@pytest.mark.parametrize(
    "squeeze, opset, gate", [("keepdims", 13, "Sigmoid"), ("reshape", 18, "HardSigmoid"), ("unsqueeze", 11, "Sigmoid")]
)
def test_nhwc_se_blocks_are_found_fused_stripped_and_exported(squeeze, opset, gate):
    original = keras_se_model(opset=opset, squeeze=squeeze, gate=gate, blocks=2)
    model = ir.from_proto(original)
    blocks = find_se(model)
    assert len(blocks) == 2 and all(block.layout == "NHWC" and block.channels == 8 for block in blocks)
    assert {node.name.split("/")[0] for node in blocks[0].nodes} == {"se0"}
    for form in ("canonical", "function"):
        fused, _ = fuse_se(model, form=form)
        _close(_proto(fused), original)
    canonical = fuse_se(model, "canonical")[0]
    assert [block.layout for block in find_se(canonical)] == ["NHWC", "NHWC"]
    _close(_proto(fuse_se(model, "conv")[0]), original)
    stripped, _ = strip_se(model)
    _close(_proto(stripped), keras_se_model(opset=opset, squeeze=squeeze, gate=gate, blocks=0))
    weights = export_se_weights(model)
    np.testing.assert_array_equal(weights["conv_0.fc1.weight"], blocks[0].weights().fc1_weight)
    # insert skips the conv an SE block already follows, and adds one after the last conv.
    inserted, report = insert_se(model, InsertOptions(where="conv"))
    assert [skip.reason for skip in report.skipped] == ["already followed by an attention block"]
    assert [block.layout for block in report.blocks] == ["NHWC"]
    _close(_proto(inserted), original)


def test_nhwc_gate_that_is_not_broadcast_over_the_spatial_axes_is_a_near_miss():
    original = keras_se_model(squeeze="reshape")
    reshape = next(n for n in original.graph.node if n.op_type == "Reshape")
    shape = next(t for t in original.graph.initializer if t.name == reshape.input[1])
    shape.CopyFrom(onnx.numpy_helper.from_array(np.array([-1, 1, 8, 1], np.int64), shape.name))
    from se_onnx.passes.find import detect

    detection = detect(ir.from_proto(original))
    assert not detection.blocks
    assert "reshaped" in detection.near_misses[0].reason


# --- ONNX Runtime's QDQ format --------------------------------------------------------------------


@pytest.fixture(scope="module")
def qdq_resnet() -> onnx.ModelProto:
    return quantize_qdq(build_samples.resnet_like(opset=13))


def _optimized_op_counts(model: onnx.ModelProto, tmp_path) -> dict[str, int]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    return {op: ops.count(op) for op in set(ops)}


@pytest.mark.parametrize("init", ["saturated", "identity"])
@pytest.mark.parametrize("where", ["residual", "conv"])
def test_insert_into_qdq_keeps_the_integers_and_the_int8_conv_fusions(qdq_resnet, where, init, tmp_path):
    model, report = insert_se(ir.from_proto(qdq_resnet), InsertOptions(where=where, init=init))
    proto = _proto(model)
    assert report.blocks and all(block.requantized for block in report.blocks)
    if init == "saturated":
        _close(proto, qdq_resnet, atol=0)  # a gate of exactly 1, requantized on the input's own grid
    else:
        # The trainable identity's gate can reach 2: its grid is twice as coarse, a step off at most.
        feeds = calibration_inputs(qdq_resnet, batches=1, batch=3, seed=7)[0]
        reference = _run(qdq_resnet, feeds)
        np.testing.assert_allclose(_run(proto, feeds), reference, atol=0.05 * np.abs(reference).max())
    # The groups around each block stay whole: here a BatchNorm sits between each conv and its
    # block, so ONNX Runtime fuses every conv it fused before (a block right after a conv's Q/DQ
    # pair reads it twice, which costs that conv its fusion; see the README).
    before, after = _optimized_op_counts(qdq_resnet, tmp_path), _optimized_op_counts(proto, tmp_path)
    assert after.get("QLinearConv", 0) == before.get("QLinearConv", 0) > 0
    # Every pass on the result: the inserted blocks are found and stripped back to the model.
    assert len(find_se(model)) == len(report.blocks)
    stripped, _ = strip_se(model)
    _close(_proto(stripped), qdq_resnet, atol=0)


def test_every_pass_on_random_blocks_inserted_into_qdq(qdq_resnet):
    model, report = insert_se(ir.from_proto(qdq_resnet), InsertOptions(where="residual", init="random"))
    _differ(_proto(model), qdq_resnet)
    _every_pass_on_inserted(qdq_resnet, model, blocks=len(report.blocks), where="residual")


@pytest.fixture(scope="module")
def quantized_se() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """A float model with random SE blocks, and ONNX Runtime's QDQ quantization of it."""
    float_model, _ = insert_se(ir.from_proto(build_samples.resnet_like(opset=13)), InsertOptions(init="random"))
    float_proto = ir.to_proto(float_model)
    return float_proto, quantize_qdq(float_proto)


def test_quantized_se_blocks_are_seen_through_their_qdq_pairs(quantized_se):
    float_model, quantized = quantized_se
    model = ir.from_proto(quantized)
    blocks = find_se(model)
    assert len(blocks) == len(find_se(ir.from_proto(float_model))) == 2
    # ONNX Runtime folds the Relu between the layers into a Q/DQ pair clipping at 0.
    assert all(block.activation.op_type == "Relu" for block in blocks)
    assert all(any(node.op_type == "QuantizeLinear" for node in block.nodes) for block in blocks)
    exported = export_se_weights(model)
    reference = export_se_weights(ir.from_proto(float_model))
    assert sorted(exported) == sorted(reference)
    for key, array in reference.items():  # int8 weights: within one quantization step
        np.testing.assert_allclose(exported[key], array, atol=np.abs(array).max() / 100)


def test_fuse_and_strip_on_a_quantized_model(quantized_se):
    _, quantized = quantized_se
    model = ir.from_proto(quantized)
    feeds = calibration_inputs(quantized, batches=1, batch=3, seed=7)[0]
    reference = _run(quantized, feeds)
    # The fused excitation runs in float: the rounding of its Q/DQ pairs is gone, a step or so.
    inside = sum(node.op_type == "QuantizeLinear" for block in find_se(model) for node in block.nodes)
    quantizers = [n.op_type for n in quantized.graph.node].count("QuantizeLinear")
    for fused in (fuse_se(model, form="canonical")[0], fuse_se(model, form="function")[0], fuse_se(model, "conv")[0]):
        fused_proto = _proto(fused)
        assert [n.op_type for n in fused_proto.graph.node].count("QuantizeLinear") == quantizers - inside
        np.testing.assert_allclose(_run(fused_proto, feeds), reference, atol=0.05 * np.abs(reference).max())
    stripped, report = strip_se(model)
    assert not find_se(stripped)
    stripped_ops = [n.op_type for n in _proto(stripped).graph.node]
    assert "Sigmoid" not in stripped_ops and "Gemm" in stripped_ops  # the classifier stays
    assert report.nodes_removed > 2 * 7  # each block's 7 ops and the pairs between them


def test_identity_se_quantized_then_stripped_gives_the_same_integers():
    float_model, _ = insert_se(ir.from_proto(build_samples.resnet_like(opset=13)), InsertOptions(init="saturated"))
    quantized = quantize_qdq(ir.to_proto(float_model))
    stripped, _ = strip_se(ir.from_proto(quantized))
    _close(_proto(stripped), quantized, atol=1e-6)


@pytest.mark.parametrize("op_type", ["QLinearConv", "ConvInteger"])
def test_integer_convs_stay_refused(qdq_resnet, op_type):
    model = ir.from_proto(qdq_resnet)
    next(node for node in model.graph if node.op_type == "Conv").op_type = op_type
    with pytest.raises(SeOnnxError, match="insert SE blocks into the float model, then quantize it"):
        insert_se(model)


@pytest.mark.parametrize(
    "options",
    [{"extra_options": {"DedicatedQDQPair": True}}, {"per_channel": True}],
    ids=["dedicated_pairs", "per_channel"],
)
def test_quantizer_options_keep_the_blocks_visible(quantized_se, options):
    float_model, _ = quantized_se
    quantized = quantize_qdq(float_model, **options)
    model = ir.from_proto(quantized)
    assert len(find_se(model)) == 2
    feeds = calibration_inputs(quantized, batches=1, batch=3, seed=7)[0]
    reference = _run(quantized, feeds)
    fused = _proto(fuse_se(model, form="canonical")[0])
    np.testing.assert_allclose(_run(fused, feeds), reference, atol=0.05 * np.abs(reference).max())


def test_qdq_nhwc_islands_get_requantized_nhwc_blocks():
    original = quantize_qdq(tf_resnet())
    for where in ("residual", "conv"):
        model, report = insert_se(ir.from_proto(original), InsertOptions(where=where))
        assert all(block.layout == "NHWC" and block.requantized for block in report.blocks)
        assert all(block.through[:3] == ("Q/DQ", "Transpose", "Q/DQ") for block in report.blocks)
        saturated, _ = insert_se(ir.from_proto(original), InsertOptions(where=where, init="saturated"))
        _close(_proto(saturated), original, atol=0)
    model, _ = insert_se(ir.from_proto(original), InsertOptions(where="residual", init="random"))
    _every_pass_on_inserted(original, model, blocks=2, where="residual")


def test_quantized_nhwc_se_blocks_are_found_fused_and_stripped():
    quantized = quantize_qdq(keras_se_model())
    model = ir.from_proto(quantized)
    (block,) = find_se(model)
    # int8 activations here: the folded Relu is a pair whose zero point is -128.
    assert block.layout == "NHWC" and block.activation.op_type == "Relu"
    feeds = calibration_inputs(quantized, batches=1, batch=3, seed=7)[0]
    reference = _run(quantized, feeds)
    for fused in (fuse_se(model, form="canonical")[0], fuse_se(model, form="function")[0]):
        np.testing.assert_allclose(_run(_proto(fused), feeds), reference, atol=0.05 * np.abs(reference).max())
    stripped, _ = strip_se(model)
    assert not find_se(stripped) and "MatMul" not in [n.op_type for n in _proto(stripped).graph.node]
