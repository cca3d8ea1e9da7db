"""Inlines the function form's `se_onnx.SqueezeExcitation` calls back into plain ops."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
from onnx_ir.passes.common import InlinePass

from se_onnx.errors import SeOnnxError
from se_onnx.ir.se_block import FUNCTION_NAME, SE_DOMAIN


@dataclasses.dataclass
class UnfuseReport:
    """What `unfuse_se` inlined."""

    blocks_inlined: int
    functions_removed: list[str]  # "domain::name:overload" of each function dropped

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class UnfuseResult(ir.passes.PassResult):
    """The model with its SE function calls inlined, and the report."""

    report: UnfuseReport


class UnfuseSE(ir.passes.InPlacePass):
    """Inlines every `se_onnx.SqueezeExcitation` call in place, in every graph (an onnx-ir pass;
    the inverse of the fuse pass's function form), and drops the functions and the opset import.

    Raises SeOnnxError when the model has no such call. The result carries the report; in a
    `PassManager`, read it from `report` after the run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.report: UnfuseReport | None = None

    def call(self, model: ir.Model) -> UnfuseResult:
        calls = [node for node in model.graph.all_nodes() if node.domain == SE_DOMAIN and node.op_type == FUNCTION_NAME]
        if not calls:
            raise SeOnnxError(f"the model has no {SE_DOMAIN}.{FUNCTION_NAME} node to unfuse")
        removed = [f"{d}::{n}:{o}" if o else f"{d}::{n}" for (d, n, o) in model.functions if d == SE_DOMAIN]
        InlinePass(criteria=lambda function: function.domain == SE_DOMAIN)(model)
        if not any(node.domain == SE_DOMAIN for node in model.graph.all_nodes()):
            model.opset_imports.pop(SE_DOMAIN, None)
        model.graph.sort()
        self.report = UnfuseReport(len(calls), removed)
        return UnfuseResult(model, True, self.report)


def unfuse_se(model: ir.Model) -> tuple[ir.Model, UnfuseReport]:
    """A copy of `model` with every `se_onnx.SqueezeExcitation` call inlined, and the report
    (`UnfuseSE` on a copy)."""
    result = UnfuseSE()(model.clone())
    return result.model, result.report
