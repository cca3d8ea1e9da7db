"""Residual blocks whose branch ends in its activation (YOLO's C2f and C3, CSPNet's dark blocks), and
Adds that only look residual: where `--where residual` puts blocks, and that outputs stay the same."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from se_onnx import InsertOptions, InsertSE, insert_se
from tests import exporter_styles as styles
from tests.se_variants import ort_outputs

OPSETS = (11, 13, 17, 21)
DTYPES = ("float32", "float16")
# One activation op per opset, each where the opset has it (HardSwish from 14, Mish from 18).
CSP_ACTIVATIONS = {11: "LeakyRelu", 13: "Clip", 17: "HardSwish", 21: "Mish"}
BUILDS = {
    "c2f-split": lambda opset, dtype: styles.c2f_model(opset=opset, dtype=dtype),
    "c2f-slice": lambda opset, dtype: styles.c2f_model(opset=opset, dtype=dtype, split="slice"),
    "c2f-shape-slice": lambda opset, dtype: styles.c2f_model(opset=opset, dtype=dtype, split="shape-slice"),
    "c3": lambda opset, dtype: styles.c2f_model(opset=opset, dtype=dtype, split="none"),
    "csp": lambda opset, dtype: styles.csp_model(opset=opset, dtype=dtype, act=CSP_ACTIVATIONS[opset]),
}
YOLO_BRANCHES = ["model.1.m.0.cv2/conv", "model.1.m.1.cv2/conv"]
CSP_BRANCHES = ["stages.0.blocks.0.conv2/conv", "stages.0.blocks.1.conv2/conv"]


def _assert_same_outputs(original: onnx.ModelProto, model: ir.Model) -> None:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    feeds = styles.feeds(original)
    for expected, actual in zip(ort_outputs(original, feeds), ort_outputs(proto, feeds), strict=True):
        tolerance = 1e-2 if expected.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(
            actual.astype(np.float32), expected.astype(np.float32), rtol=tolerance, atol=tolerance
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("build", BUILDS)
def test_a_branch_ending_in_its_activation_gets_its_block_before_the_add(build, opset, dtype):
    proto = BUILDS[build](opset, dtype)
    model, report = insert_se(ir.from_proto(proto), InsertOptions(where="residual"))

    assert [block.name for block in report.blocks] == (CSP_BRANCHES if build == "csp" else YOLO_BRANCHES)
    activation = ("SiLU",) if build != "csp" else ("BatchNormalization", CSP_ACTIVATIONS[opset])
    assert {block.through for block in report.blocks} == {activation}
    assert {block.position for block in report.blocks} == {
        f"before the residual Add, after {' → '.join(('Conv', *activation))} (NCHW)"
    }
    for block in report.blocks:
        rescale = next(node for node in model.graph if node.name == block.nodes[-1])
        assert [use.node.op_type for use in rescale.outputs[0].uses()] == ["Add"]
        # The block reads the activation's output, which nothing else reads but the block.
        assert model.graph.node(block.nodes[0]).inputs[0].name == block.after
    _assert_same_outputs(proto, model)

    # `auto` finds the residual blocks; once every branch has its block, nothing is left to do.
    assert insert_se(ir.from_proto(proto))[1].placement == "residual"
    again = InsertSE(InsertOptions(where="residual"))(model)
    assert not again.modified and "2 already followed by an attention block" in again.report.nothing_to_do


@pytest.mark.parametrize("opset", OPSETS)
def test_adds_of_one_activation_or_of_no_conv_are_not_residual_blocks(opset):
    proto = styles.plain_adds_model(opset=opset)
    model, report = insert_se(ir.from_proto(proto), InsertOptions(where="residual"))
    assert report.blocks == [] and report.nothing_to_do.startswith("no residual block")
    assert ir.to_proto(model).SerializeToString() == ir.to_proto(ir.from_proto(proto)).SerializeToString()
    _, report = insert_se(ir.from_proto(proto))
    assert report.placement == "conv" and [block.name for block in report.blocks] == ["conv0/conv", "conv1/conv"]


@pytest.mark.parametrize("opset", OPSETS)
def test_coordinate_attention_goes_into_c2f_halves_sliced_at_run_time(opset):
    """Coordinate attention needs static H and W; the TorchScript export of YOLOv8's C2f slices at a
    bound computed from Shape, where ONNX's shape inference loses them and ONNX Runtime's finds them."""
    proto = styles.c2f_model(opset=opset, split="shape-slice")
    model, report = insert_se(ir.from_proto(proto), InsertOptions(where="residual", block="coord"))
    assert [block.name for block in report.blocks] == YOLO_BRANCHES
    _assert_same_outputs(proto, model)
