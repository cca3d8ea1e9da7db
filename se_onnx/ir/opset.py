"""Opset rules: the oldest opset se-onnx supports, and the opsets at which the ops it writes changed form."""

from __future__ import annotations

import onnx_ir as ir

from se_onnx.errors import SeOnnxError

# Opsets at which an op moved a list attribute to an input.
REDUCE_MEAN_AXES_AS_INPUT = 18
REDUCE_MAX_AXES_AS_INPUT = 18
UNSQUEEZE_AXES_AS_INPUT = 13
SPLIT_AS_INPUT = 13
# The opset that introduced HardSwish; before it, hardswish is written h·HardSigmoid(h).
HARD_SWISH_OPSET = 14
MIN_OPSET = 11


def model_opset(model: ir.Model) -> int:
    """The model's default-domain opset, refusing one older than se-onnx supports."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is None:
        raise SeOnnxError("the model imports no default-domain (ai.onnx) opset")
    if opset < MIN_OPSET:
        raise SeOnnxError(
            f"the model's opset {opset} is older than {MIN_OPSET}; convert it first "
            "(onnx.version_converter.convert_version)"
        )
    return opset
