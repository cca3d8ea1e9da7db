"""Inlines the function form's `se_onnx.SqueezeExcitation` calls back into plain ops."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
from onnx_ir.passes.common import InlinePass

from se_onnx.ir.se_block import FUNCTION_NAME, SE_DOMAIN
from se_onnx.passes.base import Report, SEPass, SEResult


@dataclasses.dataclass
class UnfuseReport(Report):
    """What `unfuse_se` inlined."""

    blocks_inlined: int
    functions_removed: list[str]  # "domain::name:overload" of each function dropped


class UnfuseSE(SEPass[UnfuseReport]):
    """Inlines every `se_onnx.SqueezeExcitation` call in place, in every graph (an onnx-ir pass;
    the inverse of the fuse pass's function form), and drops the functions and the opset import.

    A model without such a call is left as it was (`modified=False`, the report says why).
    """

    def call(self, model: ir.Model) -> SEResult[UnfuseReport]:
        calls = [node for node in model.graph.all_nodes() if node.domain == SE_DOMAIN and node.op_type == FUNCTION_NAME]
        if not calls:
            report = UnfuseReport(0, [], nothing_to_do=f"the model has no {SE_DOMAIN}.{FUNCTION_NAME} node to unfuse")
            return SEResult(model, False, report)
        removed = [f"{d}::{n}:{o}" if o else f"{d}::{n}" for (d, n, o) in model.functions if d == SE_DOMAIN]
        InlinePass(criteria=lambda function: function.domain == SE_DOMAIN)(model)
        if not any(node.domain == SE_DOMAIN for node in model.graph.all_nodes()):
            model.opset_imports.pop(SE_DOMAIN, None)
        model.graph.sort()
        return SEResult(model, True, UnfuseReport(len(calls), removed))


def unfuse_se(model: ir.Model) -> tuple[ir.Model, UnfuseReport]:
    """A copy of `model` with every `se_onnx.SqueezeExcitation` call inlined, and the report
    (`UnfuseSE` on a copy)."""
    return UnfuseSE().on_copy(model)
