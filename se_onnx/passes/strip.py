"""Removes a model's SE blocks (each rescale becomes the identity), for ablation studies."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from se_onnx.ir.graph import graphs, redirect, remove_unused
from se_onnx.ir.naming import NameScope, names_in_use
from se_onnx.passes.base import Report, SEPass, SEResult
from se_onnx.passes.find import detect


@dataclasses.dataclass
class StripReport(Report):
    """What `strip_se` removed."""

    blocks: list[dict]  # each stripped block's `SEBlock.to_dict()`, names as in the input model
    nodes_removed: int
    initializers_removed: int


class StripSE(SEPass[StripReport]):
    """Removes the model's SE blocks in place (an onnx-ir pass): every reader of a block's output
    reads the block's input instead, and nodes and initializers left unused are dropped.

    A model without SE blocks is left as it was (`modified=False`, the report says why).
    """

    def call(self, model: ir.Model) -> SEResult[StripReport]:
        blocks = detect(model).blocks
        if not blocks:
            return SEResult(model, False, StripReport([], 0, 0, nothing_to_do="the model has no SE block to strip"))
        described = [block.to_dict() for block in blocks]
        names = NameScope(names_in_use(model))
        node_count, initializer_count = _counts(model)
        # A block may rescale the output of the block before it, which is bypassed by then.
        replaced: dict[ir.Value, ir.Value] = {}
        for block in blocks:
            replaced[block.output] = replaced.get(block.input, block.input)
            redirect(block.output, replaced[block.output], names)
        remove_unused(model)
        model.graph.sort()
        nodes_left, initializers_left = _counts(model)
        report = StripReport(described, node_count - nodes_left, initializer_count - initializers_left)
        return SEResult(model, True, report)


def strip_se(model: ir.Model) -> tuple[ir.Model, StripReport]:
    """A copy of `model` without its SE blocks, and what was removed (`StripSE` on a copy)."""
    return StripSE().on_copy(model)


def _counts(model: ir.Model) -> tuple[int, int]:
    """Nodes and initializers in every graph of the model."""
    every = [graph for graph, _ in graphs(model)]
    return sum(len(graph) for graph in every), sum(len(graph.initializers) for graph in every)
