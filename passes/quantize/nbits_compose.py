"""Weight-only candidates composed from one quantizer run instead of one run each.

Block-wise round-to-nearest quantizes every weight on its own, so a candidate with some layers
left in float is the float graph with the other layers' nodes taken from the fully quantized one.
The budget's search builds a candidate per layer group and per trial; on a GPT-2 with a 50k
vocabulary each of onnxruntime's quantizer runs took ~3 s (it loads, quantizes and saves the whole
model), and the 25 runs were 75 s of a 163 s pass. Composing takes a protobuf copy.

onnxruntime's ``MatMulNBitsQuantizer`` names what replaces node ``X`` ``X_Q{bits}`` (MatMulNBits,
GatherBlockQuantized) or ``X_Q{bits}…`` (the Reshape it adds after a MatMul whose input rank is
unknown); its new initializers are named after the weight, so they are found by what the taken
nodes read.
"""

from __future__ import annotations

import onnx


def replacements(full: onnx.ModelProto, names: set[str], bits: int) -> dict[str, list[onnx.NodeProto]]:
    """The nodes of ``full`` that replace each of ``names``, in graph order."""
    found: dict[str, list[onnx.NodeProto]] = {}
    tag = f"_Q{bits}"
    for node in full.graph.node:
        cut = node.name.find(tag)
        if cut > 0 and node.name[:cut] in names:
            found.setdefault(node.name[:cut], []).append(node)
    return found


def compose(prepared: onnx.ModelProto, full: onnx.ModelProto, quantized: set[str], bits: int,
            transposed=None) -> onnx.ModelProto:
    """``prepared`` (float) with the nodes named in ``quantized`` replaced by their quantized nodes from
    ``full`` (every layer quantized); initializers are those the result reads. ``transposed``
    (``matmul_form.Rewritten.transposed``): a MatMul left float reads its table through its Transpose again."""
    swap = replacements(full, quantized, bits)
    nodes: list[onnx.NodeProto] = []
    restored: set[str] = set()
    for node in prepared.graph.node:
        if node.name in swap:
            nodes.extend(swap[node.name])
        elif transposed and node.name in transposed:
            transpose, b = transposed[node.name]
            if transpose is not None and b not in restored:
                restored.add(b)
                nodes.append(transpose)
            float_node = onnx.NodeProto()
            float_node.CopyFrom(node)
            float_node.input[1] = b
            nodes.append(float_node)
        else:
            nodes.append(node)
    out = onnx.ModelProto()
    graph = prepared.graph
    out.CopyFrom(onnx.ModelProto(ir_version=full.ir_version, producer_name=full.producer_name,
                                 producer_version=full.producer_version, domain=full.domain,
                                 model_version=full.model_version, doc_string=full.doc_string,
                                 opset_import=full.opset_import, metadata_props=prepared.metadata_props))
    out.graph.name = graph.name
    out.graph.node.extend(nodes)
    out.graph.input.extend(graph.input)
    out.graph.output.extend(graph.output)
    out.graph.value_info.extend(graph.value_info)
    read = {name for node in nodes for name in _reads(node)} | {v.name for v in graph.output}
    seen = set()
    for tensor in [*full.graph.initializer, *graph.initializer]:
        if tensor.name in read and tensor.name not in seen:
            seen.add(tensor.name)
            out.graph.initializer.append(tensor)
    return out


def _reads(node: onnx.NodeProto):
    """Inputs of ``node`` and of the nodes inside its subgraphs (which may read outer initializers)."""
    yield from node.input
    for attr in node.attribute:
        for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                  attr.graphs if attr.type == onnx.AttributeProto.GRAPHS else []):
            for inner in g.node:
                yield from _reads(inner)
