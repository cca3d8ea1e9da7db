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
    # A block may rescale the output of the block before it, which is bypassed by then.
    replaced: dict[ir.Value, ir.Value] = {}
    for block in blocks:
        replaced[block.output] = replaced.get(block.input, block.input)
        redirect(model.graph, block.output, replaced[block.output], names)
    RemoveUnusedNodesPass()(model)
    model.graph.sort()
    report = StripReport(
        blocks=described,
        nodes_removed=node_count - len(model.graph),
        initializers_removed=initializer_count - len(model.graph.initializers),
    )
    return model, report


def redirect(graph: ir.Graph, output: ir.Value, replacement: ir.Value, names: NameScope) -> None:
    """Make every reader of `output` read `replacement`. A graph output keeps its name: a fresh
    `replacement` (made by a rewrite, used nowhere yet) takes it over, and any other value is
    passed through an Identity that does, so the model's signature does not change."""
    if not output.is_graph_output():
        output.replace_all_uses_with(replacement)
        return
    used = replacement.uses() or replacement.is_graph_input() or replacement.is_graph_output()
    if not (used or replacement.is_initializer()):
        kept = replacement
    else:
        identity = ir.node("Identity", [replacement], name=names("se_strip_identity"), num_outputs=1)
        graph.append(identity)
        kept = identity.outputs[0]
    name, kept.type, kept.shape = output.name, output.type, output.shape
    output.replace_all_uses_with(kept, replace_graph_outputs=True)
    output.name = names(f"{name}_replaced")
    kept.name = name
