"""Removes a model's SE blocks (each rescale becomes the identity), for ablation studies."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.ir.graph import graphs, redirect, remove_unused
from se_onnx.ir.naming import NameScope, names_in_use
from se_onnx.passes.find import detect


@dataclasses.dataclass
class StripReport:
    """What `strip_se` removed."""

    blocks: list[dict]  # each stripped block's `SEBlock.to_dict()`, names as in the input model
    nodes_removed: int
    initializers_removed: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class StripResult(ir.passes.PassResult):
    """The model without its SE blocks, and what was removed."""

    report: StripReport


class StripSE(ir.passes.InPlacePass):
    """Removes the model's SE blocks in place (an onnx-ir pass): every reader of a block's output
    reads the block's input instead, and nodes and initializers left unused are dropped.

    Raises SeOnnxError when the model has no SE block. The result carries the report; in a
    `PassManager`, read it from `report` after the run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.report: StripReport | None = None

    def call(self, model: ir.Model) -> StripResult:
        blocks = detect(model).blocks
        if not blocks:
            raise SeOnnxError("the model has no SE block to strip")
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
        self.report = StripReport(
            blocks=described,
            nodes_removed=node_count - nodes_left,
            initializers_removed=initializer_count - initializers_left,
        )
        return StripResult(model, True, self.report)


def strip_se(model: ir.Model) -> tuple[ir.Model, StripReport]:
    """A copy of `model` without its SE blocks, and what was removed (`StripSE` on a copy)."""
    result = StripSE()(model.clone())
    return result.model, result.report


def _counts(model: ir.Model) -> tuple[int, int]:
    """Nodes and initializers in every graph of the model."""
    every = [graph for graph, _ in graphs(model)]
    return sum(len(graph) for graph in every), sum(len(graph.initializers) for graph in every)
