"""Identity elimination that keeps every graph's outputs valid, subgraphs included.

onnx-ir's ``IdentityEliminationPass`` also removes ``y = Identity(x)`` when ``y`` is a
subgraph output and ``x`` comes from an enclosing graph, so the subgraph (an ``If`` or
``Loop`` body) then returns an outer-scope value directly; onnxruntime refuses such a model
("Subgraph output ... is an outer scope value being returned directly"). This pass removes
an Identity whose output is a graph output only when its input is computed by a node of the
same graph and is not already an output itself, so renaming it keeps one value per name.
"""

from __future__ import annotations

import onnx_ir as ir


class IdentityElimination(ir.passes.InPlacePass):
    """Replaces ``Identity(X)`` with ``X`` wherever the enclosing graph stays valid."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        graphs = [model.graph, *model.functions.values()]
        for graph in graphs:
            for node in list(ir.traversal.RecursiveGraphIterator(graph)):
                if _removable(node):
                    _remove(node)
                    modified = True
        return ir.passes.PassResult(model, modified=modified)


def _removable(node: ir.Node) -> bool:
    if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
        return False
    if len(node.inputs) != 1 or len(node.outputs) != 1 or node.inputs[0] is None:
        return False
    x, y = node.inputs[0], node.outputs[0]
    if not y.is_graph_output():
        return True
    producer = x.producer()
    # y names an output of node.graph: x must be computed in that same graph, and must not
    # be an output already (renaming it would drop the other output's name).
    return (y.graph is node.graph and producer is not None and producer.graph is node.graph
            and not x.is_graph_output())


def _remove(node: ir.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if x.type is None:
        x.type = y.type
    if x.shape is None:
        x.shape = y.shape
    is_output = y.is_graph_output()
    ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
    if is_output:
        x.name = y.name
    node.graph.remove(node, safe=True)
