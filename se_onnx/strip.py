"""Removes a model's SE blocks (each rescale becomes the identity), for ablation studies."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from se_onnx.detect import detect
from se_onnx.errors import SeOnnxError
from se_onnx.naming import NameScope, names_in_use


@dataclasses.dataclass
class StripReport:
    """What `strip_se` removed."""

    blocks: list[dict]  # each stripped block's `SEBlock.to_dict()`, names as in the input model
    nodes_removed: int
    initializers_removed: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def strip_se(model: ir.Model) -> tuple[ir.Model, StripReport]:
    """A copy of `model` without its SE blocks: every consumer of a block's output reads the
    block's input instead, and nodes and initializers left unused are dropped.

    Raises SeOnnxError when the model has no SE block.
    """
    model = model.clone()
    blocks = detect(model).blocks
    if not blocks:
        raise SeOnnxError("the model has no SE block to strip")
    described = [block.to_dict() for block in blocks]
    names = NameScope(names_in_use(model))
    node_count, initializer_count = len(model.graph), len(model.graph.initializers)
    for block in blocks:
        _bypass(model.graph, block.output, block.input, names)
    RemoveUnusedNodesPass()(model)
    model.graph.sort()
    report = StripReport(
        blocks=described,
        nodes_removed=node_count - len(model.graph),
        initializers_removed=initializer_count - len(model.graph.initializers),
    )
    return model, report


def _bypass(graph: ir.Graph, output: ir.Value, replacement: ir.Value, names: NameScope) -> None:
    """Make every reader of `output` read `replacement`; a graph output keeps its name through an
    Identity, so the model's signature does not change."""
    if output.is_graph_output():
        identity = ir.node("Identity", [replacement], name=names("se_strip_identity"), num_outputs=1)
        kept = identity.outputs[0]
        name, kept.type, kept.shape = output.name, output.type, output.shape
        output.replace_all_uses_with(kept, replace_graph_outputs=True)
        output.name = names("se_strip_removed")
        kept.name = name
        graph.append(identity)
        return
    output.replace_all_uses_with(replacement)
