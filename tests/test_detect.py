"""Tests of the SE block detector: every exported form is found, look-alikes are not, near-misses say why."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from se_onnx import find_se
from se_onnx.passes.find import detect
from tests.se_variants import NEGATIVES, POSITIVES, Variant, negative_model, se_model


def _se_node_names(proto, block_index: int) -> set[str]:
    return {node.name for node in proto.graph.node if node.name.startswith(f"se{block_index}/")}


@pytest.mark.parametrize("variant", POSITIVES, ids=lambda v: v.id)
def test_every_form_is_found_with_exactly_its_nodes(variant: Variant):
    proto = se_model(variant)
    blocks = find_se(ir.from_proto(proto))

    assert len(blocks) == variant.blocks
    for index, block in enumerate(blocks):
        assert {node.name for node in block.nodes} == _se_node_names(proto, index)
        assert block.channels == variant.channels
        assert block.spatial_rank == len(variant.spatial)
        assert block.dtype == (ir.DataType.FLOAT16 if variant.dtype == "float16" else ir.DataType.FLOAT)
        if variant.activation == "none":
            assert (block.squeeze_channels, block.activation, len(block.layers)) == (None, None, 1)
        else:
            assert block.squeeze_channels == variant.squeeze_channels
            expected = {"silu_decomposed": "SiLU", "silu": "SiLU", "hardswish_decomposed": "HardSwish"}.get(
                variant.activation
            )
            assert block.activation.op_type.lower() == (expected or variant.activation).lower()


@pytest.mark.parametrize(
    ("gate", "expected"),
    [
        ("sigmoid", ("Sigmoid", None, None)),
        ("hardsigmoid_torch", ("HardSigmoid", 1 / 6, 0.5)),
        ("hardsigmoid_paddle", ("HardSigmoid", 0.2, 0.5)),
        ("hardsigmoid_default", ("HardSigmoid", 0.2, 0.5)),
        ("clip_div", ("HardSigmoid", 1 / 6, 0.5)),
        ("clip_mul", ("HardSigmoid", 1 / 6, 0.5)),
    ],
)
def test_gates_report_alpha_and_beta(gate, expected):
    (block,) = find_se(ir.from_proto(se_model(Variant(gate=gate))))
    op_type, alpha, beta = expected
    assert block.gate.op_type == op_type
    if alpha is None:
        assert block.gate.alpha is None and block.gate.beta is None
    else:
        assert block.gate.alpha == pytest.approx(alpha, rel=1e-6)
        assert block.gate.beta == pytest.approx(beta, rel=1e-6)
    assert block.to_dict()["gate"]["alpha"] == block.gate.alpha


def test_leaky_relu_reports_its_slope():
    (block,) = find_se(ir.from_proto(se_model(Variant(activation="leakyrelu"))))
    assert block.activation.alpha == pytest.approx(0.1)
    assert block.to_dict()["activation"] == "LeakyRelu(alpha=0.1)"


@pytest.mark.parametrize("layer", ["conv", "gemm", "matmul"])
def test_separate_bias_adds_and_gemm_scales_are_folded_into_the_weights(layer):
    """The normalized weights recompute the block's excitation exactly (checked in numpy)."""
    bias = "both" if layer != "matmul" else "add"
    variant = Variant(layer=layer, bias=bias, squeeze="gap" if layer == "conv" else "reducemean")
    proto = se_model(variant)
    (block,) = find_se(ir.from_proto(proto))
    arrays = {t.name: ir.from_proto(t).numpy() for t in proto.graph.initializer}
    weights = block.weights()

    def param(stem: str) -> np.ndarray:
        (name,) = [n for n in arrays if n.startswith(f"se0/{stem}_")]
        return arrays[name].astype(np.float64)

    squeezed = np.random.default_rng(0).standard_normal((3, variant.channels))
    hidden = squeezed @ weights.fc1_weight.T + weights.fc1_bias
    if layer == "conv":
        weight = param("fc1_w").reshape(variant.squeeze_channels, -1)
        expected = squeezed @ weight.T + param("fc1_b") + param("fc1_add_b").reshape(-1)
    elif layer == "gemm":  # alpha 0.5, beta 2 in the test model
        expected = 0.5 * squeezed @ param("fc1_w").T + 2.0 * param("fc1_b") + param("fc1_add_b")
    else:
        expected = squeezed @ param("fc1_w") + param("fc1_add_b")
    np.testing.assert_allclose(hidden, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [11, 18])
@pytest.mark.parametrize("kind", NEGATIVES)
def test_look_alikes_are_not_se_blocks(kind, opset):
    assert find_se(ir.from_proto(negative_model(kind, opset))) == []


def test_a_non_1x1_excitation_conv_is_a_near_miss_with_a_reason():
    detection = detect(ir.from_proto(se_model(Variant(first_kernel=3))))
    assert detection.blocks == []
    (miss,) = detection.near_misses
    assert miss.node.startswith("se0/scale") and "not 1×1" in miss.reason
    assert miss.to_dict()["stage"] == "activation"


def test_a_block_whose_excitation_is_read_elsewhere_is_a_near_miss():
    """A value inside the block used outside it: rewriting the block would break that reader."""
    proto = se_model(Variant())
    gate = next(node for node in proto.graph.node if node.name.startswith("se0/gate"))
    head = next(node for node in proto.graph.node if node.name.startswith("head"))
    head.op_type, head.input[:] = "Mul", [head.input[0], gate.output[0]]
    del head.input[2:]
    model = ir.from_proto(proto)
    detection = detect(model)
    assert detection.blocks == []
    assert any("also used outside" in miss.reason for miss in detection.near_misses)


def test_a_scale_by_a_constant_node_between_the_layers_is_a_near_miss():
    """Mul(h, Constant()) where the activation goes: the Constant node, read as a gate candidate,
    has no inputs."""
    proto = se_model(Variant())
    activation = next(node for node in proto.graph.node if node.name.startswith("se0/act"))
    constant = helper.make_node(
        "Constant", [], ["half"], name="half", value=numpy_helper.from_array(np.array(0.5, np.float32))
    )
    activation.op_type, activation.input[:] = "Mul", [activation.input[0], "half"]
    proto.graph.node.insert(0, constant)
    detection = detect(ir.from_proto(proto))
    assert detection.blocks == []
    (miss,) = detection.near_misses
    assert "not h·Sigmoid(h)" in miss.reason


def test_silu_feature_map_is_not_reported_even_as_a_near_miss():
    detection = detect(ir.from_proto(negative_model("silu_feature_map")))
    assert detection.blocks == [] and detection.near_misses == []
