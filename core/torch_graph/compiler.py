"""Compiling an ONNX graph into a program of steps, running it, and the op registry.

A graph (the main graph, or an ``If`` branch or ``Loop`` body) compiles into a
:class:`_Program`: its nodes in topological order (:func:`_topo_order`, which counts the
outer-scope values a node's subgraphs read as inputs of that node), each a :class:`_Step`
whose closure reads and writes numbered slots of one flat list (``env``).  Subgraphs use
slots of the same list, so a branch reads outer-scope values where they already are.

Op handlers register under their ONNX op types with :func:`_op` (the ``_OPS`` registry).
A handler gets a :class:`_NodeInfo` at construction (attributes, opset, subprograms) and
returns the function that runs the node, or raises ``_Unsupported`` for a setting it does
not implement.  The handlers live in :mod:`mcomp.torch_graph.ops`; this module does not
import them (they import the registry from here), and ``mcomp.torch_graph`` imports them
after it, so the registry is complete whenever the package is.  The compiler collects
every unsupported op or setting in ``problems`` rather than stopping at the first, so that
one error lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import onnx_ir as ir
import torch

from mcomp.errors import McompError
from mcomp.torch_graph.errors import _Unsupported
from mcomp.torch_graph.tensors import _tensor_to_torch

if TYPE_CHECKING:
    from mcomp.torch_graph.module import OnnxModule


# ---------------------------------------------------------------------------
# walking graphs and their subgraphs
# ---------------------------------------------------------------------------


def _is_default_domain(domain: str) -> bool:
    return domain in ("", "ai.onnx")


ML_DOMAIN = "ai.onnx.ml"
ML_PREFIX = ML_DOMAIN + "::"  # the registry's key for an ai.onnx.ml op (ops.ml): its type after this


def _handler(node: ir.Node) -> Callable | None:
    """The registered handler of ``node``'s op, in the default domain or ai.onnx.ml; None elsewhere."""
    if _is_default_domain(node.domain):
        return _OPS.get(node.op_type)
    return _OPS.get(ML_PREFIX + node.op_type) if node.domain == ML_DOMAIN else None


def _subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.value
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.value


def _all_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    yield graph
    for node in graph:
        for sub in _subgraphs(node):
            yield from _all_graphs(sub)


# ---------------------------------------------------------------------------
# programs: compiled graphs run on a flat list of slots
# ---------------------------------------------------------------------------


@dataclass
class _Step:
    fn: Callable[..., Any]
    ins: tuple[int, ...]  # slot per input, -1 for an omitted optional input
    outs: tuple[int, ...]  # slot per output, -1 for an omitted output
    label: str
    free: tuple[int, ...] = ()  # slots dead after this step (top-level graph only)


@dataclass
class _Program:
    steps: list[_Step]
    inputs: list[int]
    outputs: list[int]


class _Ctx:
    """What a running op may need beyond its inputs: the slots, to run subgraphs."""

    __slots__ = ("env",)

    def __init__(self, env: list):
        self.env = env

    def run(self, prog: _Program) -> list[torch.Tensor]:
        _run(prog.steps, self.env, self)
        return [self.env[s] for s in prog.outputs]


def _run(steps: list[_Step], env: list, ctx: _Ctx) -> None:
    for step in steps:
        try:
            res = step.fn(ctx, *[env[i] if i >= 0 else None for i in step.ins])
        except Exception as exc:
            exc.add_note(f"in ONNX node {step.label}")
            raise
        for s, r in zip(step.outs, res):
            if s >= 0:
                env[s] = r
        for s in step.free:
            env[s] = None


class _NodeInfo:
    """A node as an op handler sees it at construction."""

    def __init__(self, node: ir.Node, opset: int, compiler: "_Compiler"):
        self.node = node
        self.op = node.op_type
        self.opset = opset
        self.compiler = compiler
        self.nin = len(node.inputs)
        self.nout = len(node.outputs)

    def attr(self, name: str, default: Any = None) -> Any:
        a = self.node.attributes.get(name)
        if a is None:
            return default
        t = a.type
        A = ir.AttributeType
        if t == A.INT:
            return int(a.value)
        if t == A.FLOAT:
            return float(a.value)
        if t == A.STRING:
            return a.value.decode() if isinstance(a.value, bytes) else str(a.value)
        if t == A.INTS:
            return [int(v) for v in a.value]
        if t == A.FLOATS:
            return [float(v) for v in a.value]
        if t == A.STRINGS:
            return [v.decode() if isinstance(v, bytes) else str(v) for v in a.value]
        return a.value

    def has_output(self, i: int) -> bool:
        return i < self.nout and bool(self.node.outputs[i].name)

    def subprogram(self, attr: str) -> _Program:
        return self.compiler.compile_graph(self.attr(attr))


_OPS: dict[str, Callable[[_NodeInfo], Callable]] = {}


def _op(*names: str):
    def deco(fn):
        for n in names:
            _OPS[n] = fn
        return fn

    return deco


def supported_ops() -> list[str]:
    """The ONNX op types the converter runs: the default domain's, and ``ai.onnx.ml::Op``."""
    return sorted(set(_OPS) | {"Constant"})


class _Compiler:
    def __init__(self, module: "OnnxModule", model: ir.Model, site_slots: dict[int, tuple[str, str]]):
        self.module = module
        self.model = model
        self.slots: dict[int, int] = {}  # id(ir.Value) -> slot
        self.keep: list[ir.Value] = []  # keeps ids stable during compilation
        self.site_slots = site_slots  # id(Value) -> ("param"|"buffer", attribute name)
        self.fill: list[tuple[int, str, str]] = []  # (slot, kind, attribute name)
        self.problems: dict[tuple[str, str], dict[str, list[str]]] = {}
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 21))
        self._nconst = 0

    def slot(self, v: ir.Value) -> int:
        k = id(v)
        s = self.slots.get(k)
        if s is None:
            s = self.slots[k] = len(self.slots)
            self.keep.append(v)
            site = self.site_slots.get(k)
            if site is not None:
                self.fill.append((s, *site))
        return s

    def problem(self, node: ir.Node, reason: str | None = None) -> None:
        key = (node.op_type, node.domain or "")
        self.problems.setdefault(key, {}).setdefault(reason or "", []).append(node.name or "<unnamed>")

    def add_buffer(self, value: ir.Value, tensor: torch.Tensor) -> None:
        name = f"c{self._nconst}"
        self._nconst += 1
        self.module._consts.register_buffer(name, tensor, persistent=False)
        self.site_slots[id(value)] = ("buffer", name)

    def compile_graph(self, graph: ir.Graph) -> _Program:
        steps: list[_Step] = []
        inputs = [self.slot(v) for v in graph.inputs]
        for node in _topo_order(graph):
            if _is_default_domain(node.domain) and node.op_type == "Constant":
                self._constant(node)
                continue
            handler = _handler(node)
            if handler is None:
                self.problem(node)
                for sub in _subgraphs(node):  # report what is inside too
                    self._scan(sub)
                continue
            opset = self.model.opset_imports.get(node.domain or "", self.opset)
            try:
                fn = handler(_NodeInfo(node, opset, self))
            except _Unsupported as exc:
                self.problem(node, str(exc))
                continue
            ins = tuple(self.slot(v) if v is not None else -1 for v in node.inputs)
            outs = tuple(self.slot(v) if v.name else -1 for v in node.outputs)
            label = f"{node.name or '<unnamed>'} ({node.op_type})"
            steps.append(_Step(fn, ins, outs, label))
        outputs = [self.slot(v) for v in graph.outputs]
        return _Program(steps, inputs, outputs)

    def _scan(self, graph: ir.Graph) -> None:
        for node in graph:
            if _handler(node) is None and not (_is_default_domain(node.domain) and node.op_type == "Constant"):
                self.problem(node)
            for sub in _subgraphs(node):
                self._scan(sub)

    def _constant(self, node: ir.Node) -> None:
        out = node.outputs[0]
        if id(out) in self.site_slots:  # a tensor-valued Constant, registered already
            self.slot(out)
            return
        attrs = node.attributes
        try:
            if "value" in attrs:
                t = _tensor_to_torch(attrs["value"].value)
            elif "value_float" in attrs:
                t = torch.tensor(float(attrs["value_float"].value), dtype=torch.float32)
            elif "value_floats" in attrs:
                t = torch.tensor([float(x) for x in attrs["value_floats"].value], dtype=torch.float32)
            elif "value_int" in attrs:
                t = torch.tensor(int(attrs["value_int"].value), dtype=torch.int64)
            elif "value_ints" in attrs:
                t = torch.tensor([int(x) for x in attrs["value_ints"].value], dtype=torch.int64)
            else:
                raise _Unsupported(f"Constant with {', '.join(attrs) or 'no value'}")
        except _Unsupported as exc:
            self.problem(node, str(exc))
            return
        self.add_buffer(out, t)
        self.slot(out)


def _topo_order(graph: ir.Graph) -> list[ir.Node]:
    """The graph's nodes, in their stored order when that is topological, else sorted."""
    nodes = list(graph)
    local = {id(o): i for i, n in enumerate(nodes) for o in n.outputs}
    deps: list[set[int]] = []
    ordered = True
    for i, n in enumerate(nodes):
        d = {local[id(v)] for v in _reads(n) if id(v) in local}
        d.discard(i)
        deps.append(d)
        if any(j > i for j in d):
            ordered = False
    if ordered:
        return nodes
    done: set[int] = set()
    out: list[ir.Node] = []

    def visit(i: int, stack: set[int]) -> None:
        if i in done:
            return
        if i in stack:
            raise McompError(f"graph {graph.name!r} has a cycle through node {nodes[i].name!r}")
        stack.add(i)
        for j in sorted(deps[i]):
            visit(j, stack)
        stack.discard(i)
        done.add(i)
        out.append(nodes[i])

    for i in range(len(nodes)):
        visit(i, set())
    return out


def _reads(node: ir.Node) -> list[ir.Value]:
    """Values a node reads: its inputs and the outer-scope values its subgraphs read."""
    vals = [v for v in node.inputs if v is not None]
    for sub in _subgraphs(node):
        vals.extend(_captured(sub))
    return vals


def _captured(graph: ir.Graph) -> list[ir.Value]:
    """Values read inside ``graph`` (recursively) that are defined outside it."""
    defined = {id(v) for v in graph.inputs} | {id(v) for v in graph.initializers.values()}
    for n in _all_nodes(graph):
        defined.update(id(o) for o in n.outputs)
        for sub in _subgraphs(n):
            defined.update(id(v) for v in sub.inputs)
            defined.update(id(v) for v in sub.initializers.values())
    seen: dict[int, ir.Value] = {}
    for n in _all_nodes(graph):
        for v in n.inputs:
            if v is not None and id(v) not in defined:
                seen[id(v)] = v
    for g in _all_graphs(graph):
        for v in g.outputs:
            if id(v) not in defined:
                seen[id(v)] = v
    return list(seen.values())


def _all_nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    for g in _all_graphs(graph):
        yield from g
