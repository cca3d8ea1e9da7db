"""Removes a model's SE blocks, or its blocks of another kind or of every kind (each rescale becomes
the identity), for ablation studies."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from se_onnx.errors import OptionError
from se_onnx.ir.attention import KIND_NAMES, KINDS
from se_onnx.ir.graph import graphs, redirect, remove_unused
from se_onnx.ir.naming import NameScope, names_in_use
from se_onnx.passes.base import Report, SEPass, SEResult
from se_onnx.passes.find_attention import find_attention

# What `StripSE` can remove: one kind of block, or every kind.
STRIP_BLOCKS = (*KINDS, "all")


@dataclasses.dataclass
class StripReport(Report):
    """What `strip_se` removed."""

    # Each stripped block's `SEBlock.to_dict()` (`AttentionBlock.to_dict()`, with its kind, unless
    # only SE blocks were stripped), names as in the input model.
    blocks: list[dict]
    nodes_removed: int
    initializers_removed: int


class StripSE(SEPass[StripReport]):
    """Removes the model's blocks of kind `block` ("se" by default, or "all") in place (an onnx-ir
    pass): every reader of a block's output reads the block's input instead, and nodes and
    initializers left unused are dropped.

    A model without such blocks is left as it was (`modified=False`, the report says why).
    """

    def __init__(self, block: str = "se") -> None:
        super().__init__()
        if block not in STRIP_BLOCKS:
            raise OptionError("block", f"must be one of {', '.join(STRIP_BLOCKS)}, not {block!r}")
        self.block = block

    def call(self, model: ir.Model) -> SEResult[StripReport]:
        blocks = find_attention(model, None if self.block == "all" else self.block)
        if not blocks:
            name = "attention" if self.block == "all" else KIND_NAMES[self.block]
            why = f"the model has no {name} block to strip"
            return SEResult(model, False, StripReport([], 0, 0, nothing_to_do=why))
        described = [
            block.se.to_dict() if self.block == "se" and block.se is not None else block.to_dict() for block in blocks
        ]
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


def strip_se(model: ir.Model, block: str = "se") -> tuple[ir.Model, StripReport]:
    """A copy of `model` without its blocks of kind `block` (SE by default, or "all"), and what was
    removed (`StripSE` on a copy)."""
    return StripSE(block).on_copy(model)


def _counts(model: ir.Model) -> tuple[int, int]:
    """Nodes and initializers in every graph of the model."""
    every = [graph for graph, _ in graphs(model)]
    return sum(len(graph) for graph in every), sum(len(graph.initializers) for graph in every)
