"""Fresh node and value names that never collide with the names a model already uses."""

from __future__ import annotations

import onnx_ir as ir


def names_in_use(model: ir.Model) -> set[str]:
    """Every node and value name in the model: main graph, subgraphs and local functions."""
    names: set[str] = set()
    graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    for graph in graphs:
        names.update(value.name for value in graph.inputs if value.name)
        if isinstance(graph, ir.Graph):
            names.update(graph.initializers)
            for subgraph in graph.subgraphs():  # their initializers, even those nothing reads
                names.update(subgraph.initializers)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            if node.name:
                names.add(node.name)
            names.update(value.name for value in node.inputs if value is not None and value.name)
            names.update(value.name for value in node.outputs if value.name)
            for attribute in node.attributes.values():
                if attribute.type == ir.AttributeType.GRAPH:
                    names.update(value.name for value in attribute.value.inputs if value.name)
                elif attribute.type == ir.AttributeType.GRAPHS:
                    for subgraph in attribute.value:
                        names.update(value.name for value in subgraph.inputs if value.name)
    return names


class NameScope:
    """Hands out names `<prefix><stem>`, adding `_1`, `_2`… where a name is already taken.

    Scopes made from one `taken` set share it, so names stay unique across every block a pass adds.
    """

    def __init__(self, taken: set[str], prefix: str = "") -> None:
        self._taken = taken
        self._prefix = prefix

    def child(self, prefix: str) -> NameScope:
        return NameScope(self._taken, self._prefix + prefix)

    def __call__(self, stem: str) -> str:
        name = candidate = f"{self._prefix}{stem}"
        counter = 0
        while name in self._taken:
            counter += 1
            name = f"{candidate}_{counter}"
        self._taken.add(name)
        return name
