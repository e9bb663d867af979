"""A trainable ``torch.nn.Module`` built from an ONNX graph, and its weights written back.

Training passes (distillation, fine-tuning, Taylor importance for pruning) need a
differentiable copy of the model (design §2).  :class:`OnnxModule` is that copy: an
interpreter that walks the graph's nodes in topological order and calls torch ops.

- Floating-point initializers, and the float tensors of ``Constant`` nodes with more than
  one element (some exporters, e.g. paddle2onnx for PP-OCR or spox for Silero, keep every
  weight there), become ``nn.Parameter``s, registered under sanitized names with a map
  back to the ONNX tensor names (:meth:`OnnxModule.tensor_names`).  Integer, boolean and
  one-element float constants are non-persistent buffers (they follow ``.to(device)``).
- Which parameters get ``requires_grad`` is decided by ``trainable(onnx_name)``; by default
  the tensors that act as weights are trainable and the tensors that are settings are not:
  BatchNormalization's running mean/variance, Q/DQ scales and zero points, Resize scales,
  Clip bounds, Pow exponents, Pad values, and one-element scalars not feeding a layer.
- Shape ops compute from the actual tensors at run time, so dynamic axes keep working.
- ``If`` evaluates its condition eagerly and runs the chosen branch (branches read
  outer-scope values); ``Loop`` runs its body eagerly too.  LSTM/GRU/RNN are unrolled in
  Python with the ONNX gate orders (LSTM iofc, GRU zrh), directions, initial states,
  ``sequence_lens``, peepholes, clip and ``layout``.
- BatchNormalization always runs in inference mode with the stored mean/variance, also
  under ``module.train()``: the running statistics are never updated by training (the ONNX
  model keeps them as they were).  Dropout is the identity.
- QuantizeLinear/DequantizeLinear (QDQ models) are fake-quantization: Q rounds (half to
  even) in the forward pass with a straight-through estimator (identity gradient for the
  rounding, the clamp to the zero-point type's range passes no gradient outside it), and
  keeps the quantized values in floating point when every consumer is a DequantizeLinear,
  so a quantized student stays trainable.  Per-tensor, per-axis and blocked scales.

Going back needs no ``torch.onnx.export``: :func:`write_back` copies the parameter values
into the ONNX model's tensors (initializers, ``Constant`` node attributes) in place,
keeping their dtypes, so names, dynamic axes, the graph structure (pruned shapes
included) and everything else stay exactly as they were.

Why an interpreter of our own on ``onnx_ir`` rather than a converter library: onnx2torch
(last release 1.5.15, August 2024) has no converter for If, Loop (its issue #204) or
QuantizeLinear/DequantizeLinear, and none released for LSTM or GRU (issues #136 and #233
are open; the pull request adding them leaves out ``sequence_lens``, peepholes and clip),
converts some ops only from newer opsets (NonZero from opset 11, issue #61), and rebuilds
the graph as an fx module whose weights would have to be mapped back by hand.  The models
this project compresses (PP-OCR at opset 11/12 with every weight in a Constant node, Silero
VAD with ``If`` nested four deep and its weights inside the branches, QDQ students) need
If/LSTM, old opsets and an exact way back to the same tensors, which an interpreter over
the graph gives for free.

Unsupported ops (or unsupported settings of supported ops) are all reported at
construction time in one :class:`UnsupportedOp`, subgraphs included: ops outside the
default domain (``com.microsoft`` fused ops, model-local functions), Scan, the sequence and
random ops, string tensors, float8.  The module cannot be pickled whole (its ops are
closures): keep its ``state_dict`` or write the weights back into the ONNX model.
``copy.deepcopy`` works (a teacher and a student from one model).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from mcomp.errors import BadInput, McompError

__all__ = ["OnnxModule", "UnsupportedOp", "supported_ops", "to_torch", "write_back"]


class UnsupportedOp(BadInput):
    """The graph holds ops (or op settings) this converter cannot run; the message lists
    every one of them with its domain and node names."""


class _Unsupported(Exception):
    """Raised by an op handler at construction for a setting it does not implement."""


# ---------------------------------------------------------------------------
# dtypes and tensors
# ---------------------------------------------------------------------------

_D = ir.DataType
_TORCH_DTYPES: dict[ir.DataType, torch.dtype] = {
    _D.FLOAT: torch.float32, _D.DOUBLE: torch.float64, _D.FLOAT16: torch.float16,
    _D.BFLOAT16: torch.bfloat16, _D.INT8: torch.int8, _D.UINT8: torch.uint8,
    _D.INT16: torch.int16, _D.INT32: torch.int32, _D.INT64: torch.int64, _D.BOOL: torch.bool,
    _D.UINT16: torch.uint16, _D.UINT32: torch.uint32, _D.UINT64: torch.uint64,
}
_FLOAT_TYPES = frozenset({_D.FLOAT, _D.DOUBLE, _D.FLOAT16, _D.BFLOAT16})
# Integer ranges of the quantized types (QuantizeLinear saturates to these).
_QRANGE: dict[ir.DataType, tuple[int, int]] = {
    _D.INT8: (-128, 127), _D.UINT8: (0, 255), _D.INT16: (-32768, 32767), _D.UINT16: (0, 65535),
    _D.INT32: (-(2**31), 2**31 - 1), _D.INT4: (-8, 7), _D.UINT4: (0, 15),
}
# Types stored in a wider torch type (values kept exactly).
_WIDENED = {_D.INT4: torch.int8, _D.UINT4: torch.uint8}


def _torch_dtype(dt: ir.DataType | int) -> torch.dtype:
    dt = ir.DataType(dt)
    if dt in _TORCH_DTYPES:
        return _TORCH_DTYPES[dt]
    if dt in _WIDENED:
        return _WIDENED[dt]
    raise _Unsupported(f"data type {dt.name}")


def _tensor_to_torch(t: ir.TensorProtocol) -> torch.Tensor:
    dt = t.dtype
    if dt == _D.STRING:
        raise _Unsupported("string tensors")
    arr = t.numpy()
    if dt == _D.BFLOAT16:
        return torch.from_numpy(np.asarray(arr, dtype=np.float32).copy()).to(torch.bfloat16)
    target = _torch_dtype(dt)  # raises for float8 and the like
    if dt in _WIDENED:
        arr = np.asarray(arr).astype(np.int8 if target == torch.int8 else np.uint8)
    return torch.from_numpy(np.array(arr, copy=True))


def _torch_to_numpy(t: torch.Tensor, dt: ir.DataType) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().astype(dt.numpy(), copy=False)


def _numel(t: ir.TensorProtocol) -> int:
    return math.prod(t.shape.numpy()) if t.shape is not None else 1


# ---------------------------------------------------------------------------
# where the tensors live: initializers and Constant nodes, in a fixed walk order
# ---------------------------------------------------------------------------


def _is_default_domain(domain: str) -> bool:
    return domain in ("", "ai.onnx")


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


@dataclass
class _Site:
    kind: str  # "initializer" | "constant"
    name: str  # the ONNX value name (a Constant node's output name)
    value: ir.Value
    node: ir.Node | None  # the Constant node
    tensor: ir.TensorProtocol | None

    @property
    def is_parameter(self) -> bool:
        """Float initializers, and float Constant tensors with more than one element."""
        t = self.tensor
        if t is None or t.dtype not in _FLOAT_TYPES:
            return False
        return self.kind == "initializer" or _numel(t) > 1


def _sites(model: ir.Model) -> Iterator[_Site]:
    """Every stored tensor, graph by graph (depth first), initializers then Constant nodes."""
    for graph in _all_graphs(model.graph):
        for v in graph.initializers.values():
            yield _Site("initializer", v.name or "", v, None, v.const_value)
        for node in graph:
            if node.op_type == "Constant" and _is_default_domain(node.domain):
                attr = node.attributes.get("value")
                if attr is not None and attr.type == ir.AttributeType.TENSOR and node.outputs:
                    yield _Site("constant", node.outputs[0].name or "", node.outputs[0], node, attr.value)


def _site_keys(sites: list[_Site]) -> list[tuple[str, str, int]]:
    """(kind, name, occurrence): names may repeat across sibling subgraphs."""
    seen: dict[tuple[str, str], int] = {}
    keys = []
    for s in sites:
        k = (s.kind, s.name)
        keys.append((s.kind, s.name, seen.get(k, 0)))
        seen[k] = seen.get(k, 0) + 1
    return keys


# Input slots that hold settings rather than weights (not trained by default).
_SETTING_SLOTS: dict[str, frozenset[int]] = {
    "BatchNormalization": frozenset({3, 4}), "QuantizeLinear": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}), "Resize": frozenset({1, 2, 3}), "Upsample": frozenset({1}),
    "Clip": frozenset({1, 2}), "Pow": frozenset({1}), "Range": frozenset({0, 1, 2}),
    "Pad": frozenset({1, 2, 3}), "ConstantOfShape": frozenset({0}), "Dropout": frozenset({1, 2}),
    "OneHot": frozenset({1, 2}), "TopK": frozenset({1}), "Trilu": frozenset({1}),
}
# Input slots of layers whose tensors are weights whatever their size.
_WEIGHT_SLOTS: dict[str, frozenset[int]] = {
    "Conv": frozenset({1, 2}), "ConvTranspose": frozenset({1, 2}), "Gemm": frozenset({0, 1, 2}),
    "MatMul": frozenset({0, 1}), "BatchNormalization": frozenset({1, 2}),
    "InstanceNormalization": frozenset({1, 2}), "LayerNormalization": frozenset({1, 2}),
    "GroupNormalization": frozenset({1, 2}), "PRelu": frozenset({1}),
    "LSTM": frozenset({1, 2, 3, 7}), "GRU": frozenset({1, 2, 3}), "RNN": frozenset({1, 2, 3}),
}


def _default_trainable(site: _Site) -> bool:
    big = _numel(site.tensor) > 1
    for use in site.value.uses():
        op = use.node.op_type
        if use.idx in _WEIGHT_SLOTS.get(op, ()):
            return True
        if big and use.idx not in _SETTING_SLOTS.get(op, ()):
            return True
    return False


_IDENT = re.compile(r"\W")


def _sanitize(name: str) -> str:
    s = _IDENT.sub("_", name) or "_"
    return "_" + s if s[0].isdigit() else s


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
    """The ONNX op types (default domain) the converter runs."""
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
            handler = _OPS.get(node.op_type) if _is_default_domain(node.domain) else None
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
            if not _is_default_domain(node.domain) or (node.op_type not in _OPS and node.op_type != "Constant"):
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


# ---------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------


class OnnxModule(torch.nn.Module):
    """A differentiable interpreter of an ONNX model (see the module docstring).

    ``forward`` takes the graph inputs positionally (in ``input_names`` order) or by
    name, and returns a tuple with one tensor per graph output (``output_names``).
    Initializers that are also graph inputs may be fed by name to override them.
    """

    input_names: list[str]
    output_names: list[str]

    def __init__(self, model: ir.Model, *, trainable: Callable[[str], bool] | None = None):
        super().__init__()
        self._consts = torch.nn.Module()  # non-persistent buffers: integer and small constants
        self.input_names, self.output_names = [], []
        self._main, self._fill, self._input_slots, self._nslots = None, [], {}, 0
        sites = list(_sites(model))
        keys = _site_keys(sites)
        site_slots: dict[int, tuple[str, str]] = {}
        self._entries: list[tuple[str, tuple[str, str, int], ir.DataType]] = []
        self._by_onnx: dict[str, str] = {}
        used: set[str] = set()
        compiler = _Compiler(self, model, site_slots)
        for site, key in zip(sites, keys):
            if site.tensor is None:
                continue
            if not site.is_parameter:
                try:
                    compiler.add_buffer(site.value, _tensor_to_torch(site.tensor))
                except _Unsupported as exc:
                    if site.node is not None:
                        compiler.problem(site.node, str(exc))
                    else:
                        raise UnsupportedOp(f"initializer {site.name!r}: {exc} are not supported") from None
                continue
            attr = _sanitize(site.name)
            base, k = attr, 1
            while attr in used or hasattr(self, attr):
                attr = f"{base}_{k}"
                k += 1
            used.add(attr)
            grad = trainable(site.name) if trainable is not None else _default_trainable(site)
            param = torch.nn.Parameter(_tensor_to_torch(site.tensor), requires_grad=bool(grad))
            self.register_parameter(attr, param)
            site_slots[id(site.value)] = ("param", attr)
            self._entries.append((attr, key, site.tensor.dtype))
            self._by_onnx.setdefault(site.name, attr)

        graph = model.graph
        init_ids = {id(v) for v in graph.initializers.values()}
        self._main = compiler.compile_graph(graph)
        if compiler.problems:
            raise UnsupportedOp(_describe_problems(compiler.problems))
        self.input_names = [v.name for v in graph.inputs if id(v) not in init_ids]
        self.output_names = [v.name for v in graph.outputs]
        self._input_slots = {v.name: compiler.slot(v) for v in graph.inputs}
        self._nslots = len(compiler.slots)
        self._fill = [(s, kind == "param", name) for s, kind, name in compiler.fill]
        self._plan_frees(graph, compiler)

    def _plan_frees(self, graph: ir.Graph, compiler: _Compiler) -> None:
        """Drop each top-level value after its last use (less memory without autograd)."""
        last: dict[int, int] = {}
        nodes = [n for n in _topo_order(graph) if not (n.op_type == "Constant" and _is_default_domain(n.domain))]
        for i, (node, step) in enumerate(zip(nodes, self._main.steps)):
            for s in step.ins:
                if s >= 0:
                    last[s] = i
            for v in _reads(node):
                s = compiler.slots.get(id(v))
                if s is not None:
                    last[s] = i
        keep = set(self._main.outputs)
        frees: dict[int, list[int]] = {}
        for s, i in last.items():
            if s not in keep:
                frees.setdefault(i, []).append(s)
        for i, step in enumerate(self._main.steps):
            step.free = tuple(frees.get(i, ()))

    # -- API ---------------------------------------------------------------

    def forward(self, *args: torch.Tensor, **feeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(args) > len(self.input_names):
            raise TypeError(f"expected at most {len(self.input_names)} positional inputs, got {len(args)}")
        given = dict(zip(self.input_names, args))
        for name, value in feeds.items():
            if name not in self._input_slots:
                raise TypeError(f"unknown input {name!r}; inputs: {', '.join(self.input_names)}")
            if name in given:
                raise TypeError(f"input {name!r} given twice")
            given[name] = value
        missing = [n for n in self.input_names if n not in given]
        if missing:
            raise TypeError(f"missing input(s): {', '.join(missing)}")
        env: list = [None] * self._nslots
        params, bufs = self._parameters, self._consts._buffers
        for slot, is_param, name in self._fill:
            env[slot] = params[name] if is_param else bufs[name]
        for name, value in given.items():
            if not isinstance(value, torch.Tensor):
                value = torch.as_tensor(np.asarray(value))
            env[self._input_slots[name]] = value
        ctx = _Ctx(env)
        _run(self._main.steps, env, ctx)
        return tuple(env[s] for s in self._main.outputs)

    def parameter_for(self, tensor_name: str) -> torch.nn.Parameter | None:
        """The Parameter holding the ONNX tensor ``tensor_name`` (an initializer's name or a
        Constant node's output name), or None when that tensor is not a parameter."""
        attr = self._by_onnx.get(tensor_name)
        return None if attr is None else self._parameters[attr]

    def tensor_names(self) -> dict[str, str]:
        """Parameter attribute name -> ONNX tensor name."""
        return {attr: key[1] for attr, key, _ in self._entries}


def _describe_problems(problems: dict[tuple[str, str], dict[str, list[str]]]) -> str:
    parts = []
    for (op, domain), reasons in problems.items():
        for reason, nodes in reasons.items():
            shown = ", ".join(repr(n) for n in nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
            what = f"{op} (domain {domain or 'ai.onnx'!r}, node{'s' if len(nodes) > 1 else ''} {shown})"
            parts.append(f"{what}: {reason}" if reason else what)
    ops = sorted({op for op, _ in problems})
    return f"cannot convert to torch: unsupported op{'s' if len(ops) > 1 else ''} {', '.join(ops)}: " + "; ".join(parts)


def to_torch(model: ir.Model, **kw) -> OnnxModule:
    """An :class:`OnnxModule` for ``model`` (keyword arguments go to its constructor)."""
    return OnnxModule(model, **kw)


def write_back(module: OnnxModule, model: ir.Model) -> int:
    """Copy ``module``'s parameter values into ``model``'s tensors, in place.

    ``model`` must be the model the module was built from, or a copy of it: tensors are
    matched by kind (initializer or Constant node), ONNX name and occurrence.  Dtypes and
    shapes are kept (a shape mismatch is an error).  Returns the number of tensors written
    (every parameter, trained or not).
    """
    sites = list(_sites(model))
    by_key = {k: s for k, s in zip(_site_keys(sites), sites) if s.is_parameter}
    params = dict(module.named_parameters(recurse=False))
    count = 0
    for attr, key, _dtype in module._entries:
        site = by_key.get(key)
        if site is None:
            raise McompError(f"write_back: the model has no {key[0]} {key[1]!r} (was it built from another model?)")
        old = site.tensor
        arr = _torch_to_numpy(params[attr], old.dtype)
        if tuple(arr.shape) != tuple(old.shape.numpy()):
            raise McompError(
                f"write_back: parameter {attr!r} has shape {tuple(arr.shape)}, "
                f"the ONNX tensor {key[1]!r} {tuple(old.shape.numpy())}")
        new = ir.Tensor(arr, dtype=old.dtype, name=old.name)
        if site.kind == "initializer":
            site.value.const_value = new
        else:
            site.node.attributes["value"] = ir.AttrTensor("value", new)
        count += 1
    return count


# ---------------------------------------------------------------------------
# helpers for the ops
# ---------------------------------------------------------------------------


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _scalar(t: torch.Tensor) -> Any:
    return t.reshape(-1)[0].item()


def _torch_pad(begins: list[int], ends: list[int]) -> list[int]:
    """ONNX per-axis (begin, end) -> F.pad's flat list, last axis first."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [b, e]
    return out


def _one(fn: Callable[..., torch.Tensor]) -> Callable[[_NodeInfo], Callable]:
    """A handler for an op with one output and no attributes."""

    def handler(n: _NodeInfo):
        return lambda ctx, *xs: (fn(*xs),)

    return handler


def _bcast_to_axis(p: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    """A 1-D per-channel tensor shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    if p.dim() <= 1 and p.numel() > 1:
        shape = [1] * rank
        shape[axis] = -1
        return p.reshape(shape)
    return p


# ---------------------------------------------------------------------------
# element-wise ops
# ---------------------------------------------------------------------------


def _div(a, b):
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a, b):
    y = torch.pow(a, b)
    return y if y.dtype == a.dtype else y.to(a.dtype)


for _name, _fn in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": _pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor, "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor, "MatMul": torch.matmul,
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Erf": torch.erf, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan,
    "Asin": torch.asin, "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh,
    "Cosh": torch.cosh, "Asinh": torch.asinh, "Acosh": torch.acosh, "Atanh": torch.atanh,
    "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Not": torch.logical_not,
    "BitwiseNot": torch.bitwise_not, "IsNaN": torch.isnan, "Softsign": F.softsign,
    "Softplus": F.softplus, "HardSwish": F.hardswish, "Mish": F.mish, "Det": torch.linalg.det,
    "Where": torch.where, "NonZero": lambda x: torch.nonzero(x).t().contiguous(),
}.items():
    _OPS[_name] = _one(_fn)


@_op("Identity")
def _identity(n):
    return lambda ctx, x: (x,)


@_op("Dropout")
def _dropout(n):
    return lambda ctx, x, *rest: (x, torch.ones_like(x, dtype=torch.bool))


@_op("Mod")
def _mod(n):
    fmod = n.attr("fmod", 0)
    return lambda ctx, a, b: (torch.fmod(a, b) if fmod else torch.remainder(a, b),)


@_op("IsInf")
def _isinf(n):
    neg, pos = n.attr("detect_negative", 1), n.attr("detect_positive", 1)

    def f(ctx, x):
        if neg and pos:
            return (torch.isinf(x),)
        if pos:
            return (torch.isposinf(x),)
        if neg:
            return (torch.isneginf(x),)
        return (torch.zeros_like(x, dtype=torch.bool),)

    return f


@_op("Min", "Max", "Sum", "Mean")
def _variadic(n):
    op = {"Min": torch.minimum, "Max": torch.maximum, "Sum": torch.add, "Mean": torch.add}[n.op]
    mean = n.op == "Mean"

    def f(ctx, *xs):
        y = functools.reduce(op, xs)
        return (y / len(xs) if mean else y,)

    return f


@_op("LeakyRelu")
def _leaky(n):
    a = n.attr("alpha", 0.01)
    return lambda ctx, x: (F.leaky_relu(x, a),)


@_op("Elu")
def _elu(n):
    a = n.attr("alpha", 1.0)
    return lambda ctx, x: (F.elu(x, a),)


@_op("Celu")
def _celu(n):
    a = n.attr("alpha", 1.0)
    return lambda ctx, x: (F.celu(x, a),)


@_op("Selu")
def _selu(n):
    a = n.attr("alpha", 1.67326319217681884765625)
    g = n.attr("gamma", 1.05070102214813232421875)
    return lambda ctx, x: (g * torch.where(x > 0, x, a * (torch.exp(x) - 1)),)


@_op("ThresholdedRelu")
def _thresholded_relu(n):
    a = n.attr("alpha", 1.0)
    return lambda ctx, x: (torch.where(x > a, x, torch.zeros_like(x)),)


@_op("HardSigmoid")
def _hard_sigmoid(n):
    a, b = n.attr("alpha", 0.2), n.attr("beta", 0.5)
    return lambda ctx, x: (torch.clamp(x * a + b, 0.0, 1.0),)


@_op("Shrink")
def _shrink(n):
    bias, lambd = n.attr("bias", 0.0), n.attr("lambd", 0.5)

    def f(ctx, x):
        zero = torch.zeros_like(x)
        return (torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero)),)

    return f


@_op("PRelu")
def _prelu(n):
    return lambda ctx, x, slope: (torch.where(x >= 0, x, x * slope),)


@_op("Gelu")
def _gelu(n):
    approx = n.attr("approximate", "none")
    return lambda ctx, x: (F.gelu(x, approximate=approx),)


@_op("Clip")
def _clip(n):
    if n.opset < 11:
        lo, hi = n.attr("min", None), n.attr("max", None)
        if lo is None and hi is None:
            return lambda ctx, x: (x,)
        return lambda ctx, x: (torch.clamp(x, lo, hi),)

    def scalar(t):  # clamp with number bounds is several times faster than with tensors
        return t.item() if t is not None and t.device.type == "cpu" and not t.requires_grad else t

    def f(ctx, x, lo=None, hi=None):
        if lo is not None and lo.numel() == 0:
            lo = None
        if hi is not None and hi.numel() == 0:
            hi = None
        if lo is None and hi is None:
            return (x,)
        if (lo is None or lo.numel() == 1) and (hi is None or hi.numel() == 1):
            slo, shi = scalar(lo), scalar(hi)
            if not isinstance(slo, torch.Tensor) and not isinstance(shi, torch.Tensor):
                return (torch.clamp(x, slo, shi),)
        return (torch.clamp(x, lo, hi),)

    return f


@_op("Cast")
def _cast(n):
    dt = _torch_dtype(n.attr("to"))
    return lambda ctx, x: (x.to(dt),)


@_op("CastLike")
def _cast_like(n):
    return lambda ctx, x, like: (x.to(like.dtype),)


@_op("Softmax", "LogSoftmax", "Hardmax")
def _softmax(n):
    new = n.opset >= 13
    axis = n.attr("axis", -1 if new else 1)
    op = n.op

    def apply(x, dim):
        if op == "Softmax":
            return torch.softmax(x, dim)
        if op == "LogSoftmax":
            return torch.log_softmax(x, dim)
        idx = torch.argmax(x, dim, keepdim=True)
        return torch.zeros_like(x).scatter_(dim, idx, 1)

    def f(ctx, x):
        if x.dim() == 0:
            return (apply(x.reshape(1), 0).reshape(()),)
        a = axis % x.dim()
        if new or a == x.dim() - 1:
            return (apply(x, a),)
        return (apply(x.flatten(a), -1).reshape(x.shape),)  # coerced to 2-D before opset 13

    return f


# ---------------------------------------------------------------------------
# convolution, normalization, dense
# ---------------------------------------------------------------------------

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _same_pads(in_sp, k, s, d, upper: bool) -> tuple[list[int], list[int]]:
    begins, ends = [], []
    for i, sz in enumerate(in_sp):
        out = -(-sz // s[i])
        total = max(0, (out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - sz)
        small = total // 2
        begins.append(small if upper else total - small)
        ends.append(total - small if upper else small)
    return begins, ends


def _conv_pads(auto_pad: str, pads, in_sp, k, s, d):
    nsp = len(in_sp)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(in_sp, k, s, d, auto_pad == "SAME_UPPER")
    if auto_pad == "VALID" or not pads:
        return [0] * nsp, [0] * nsp
    return list(pads[:nsp]), list(pads[nsp:])


@_op("Conv")
def _conv(n):
    auto_pad = n.attr("auto_pad", "NOTSET")
    dil, group, pads, strides = n.attr("dilations"), n.attr("group", 1), n.attr("pads"), n.attr("strides")

    def f(ctx, x, w, b=None):
        nsp = w.dim() - 2
        if nsp not in _CONV:
            raise UnsupportedOp(f"Conv with {nsp} spatial dims")
        k = w.shape[2:]
        s = strides or [1] * nsp
        d = dil or [1] * nsp
        begins, ends = _conv_pads(auto_pad, pads, x.shape[2:], k, s, d)
        if begins != ends:
            x = F.pad(x, _torch_pad(begins, ends))
            begins = [0] * nsp
        return (_CONV[nsp](x, w, b, s, begins, d, group),)

    return f


@_op("ConvTranspose")
def _conv_transpose(n):
    auto_pad = n.attr("auto_pad", "NOTSET")
    dil, group, pads, strides = n.attr("dilations"), n.attr("group", 1), n.attr("pads"), n.attr("strides")
    out_pad, out_shape = n.attr("output_padding"), n.attr("output_shape")

    def f(ctx, x, w, b=None):
        nsp = w.dim() - 2
        if nsp not in _CONVT:
            raise UnsupportedOp(f"ConvTranspose with {nsp} spatial dims")
        k = w.shape[2:]
        in_sp = x.shape[2:]
        s = strides or [1] * nsp
        d = dil or [1] * nsp
        op = list(out_pad or [0] * nsp)
        if out_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = list(out_shape[-nsp:]) if out_shape else [in_sp[i] * s[i] for i in range(nsp)]
            begins, ends = [], []
            for i in range(nsp):
                total = s[i] * (in_sp[i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 - target[i]
                if auto_pad == "SAME_UPPER":
                    begins.append(total // 2)
                    ends.append(total - total // 2)
                else:
                    begins.append(total - total // 2)
                    ends.append(total // 2)
        elif auto_pad == "VALID" or not pads:
            begins, ends = [0] * nsp, [0] * nsp
        else:
            begins, ends = list(pads[:nsp]), list(pads[nsp:])
        if begins == ends and all(p >= 0 for p in begins) and all(o < max(si, di) for o, si, di in zip(op, s, d)):
            return (_CONVT[nsp](x, w, b, s, begins, op, group, d),)
        y = _CONVT[nsp](x, w, None, s, 0, 0, group, d)
        y = F.pad(y, _torch_pad([-p for p in begins], [o - p for o, p in zip(op, ends)]))
        if b is not None:
            y = y + b.reshape([1, -1] + [1] * nsp)
        return (y,)

    return f


@_op("BatchNormalization")
def _batch_norm(n):
    if n.opset < 9 and n.attr("spatial", 1) == 0:
        raise _Unsupported("spatial=0 (per-activation statistics)")
    eps = n.attr("epsilon", 1e-5)

    def f(ctx, x, scale, bias, mean, var, *_):
        if not (mean.requires_grad or var.requires_grad) and x.dim() >= 2:
            y = F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
        else:
            shape = [1, -1] + [1] * (x.dim() - 2)
            inv = torch.rsqrt(var + eps) * scale
            y = (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)
        return (y, mean, var, mean, var)

    return f


@_op("InstanceNormalization")
def _instance_norm(n):
    eps = n.attr("epsilon", 1e-5)
    return lambda ctx, x, scale, bias: (F.instance_norm(x, weight=scale, bias=bias, eps=eps),)


@_op("LayerNormalization")
def _layer_norm(n):
    axis, eps = n.attr("axis", -1), n.attr("epsilon", 1e-5)
    extra = n.has_output(1) or n.has_output(2)

    def f(ctx, x, scale, bias=None):
        a = axis % x.dim()
        ns = tuple(x.shape[a:])
        if not extra and tuple(scale.shape) == ns and (bias is None or tuple(bias.shape) == ns):
            return (F.layer_norm(x, ns, scale, bias, eps),)
        dims = tuple(range(a, x.dim()))
        mean = x.mean(dims, keepdim=True)
        inv = torch.rsqrt(((x - mean) ** 2).mean(dims, keepdim=True) + eps)
        y = (x - mean) * inv * scale
        if bias is not None:
            y = y + bias
        return (y, mean, inv)

    return f


@_op("GroupNormalization")
def _group_norm(n):
    groups, eps, old = n.attr("num_groups"), n.attr("epsilon", 1e-5), n.opset < 21

    def f(ctx, x, scale, bias):
        c = x.shape[1]
        if old and scale.numel() == groups and groups != c:  # opset 18: one scale per group
            scale, bias = scale.repeat_interleave(c // groups), bias.repeat_interleave(c // groups)
        return (F.group_norm(x, groups, scale, bias, eps),)

    return f


@_op("LRN")
def _lrn(n):
    size, alpha, beta, k = n.attr("size"), n.attr("alpha", 1e-4), n.attr("beta", 0.75), n.attr("bias", 1.0)
    front = (size - 1) // 2

    def f(ctx, x):
        sq = (x * x).unsqueeze(1)
        pad = [0, 0] * (x.dim() - 2) + [front, size - 1 - front]
        sq = F.pad(sq, pad).squeeze(1)
        window = sq.unfold(1, size, 1).sum(-1)
        return (x / (k + alpha / size * window) ** beta,)

    return f


@_op("LpNormalization")
def _lp_norm(n):
    axis, p = n.attr("axis", -1), n.attr("p", 2)
    return lambda ctx, x: (x / torch.linalg.vector_norm(x, p, dim=axis, keepdim=True),)


@_op("Gemm")
def _gemm(n):
    ta, tb = n.attr("transA", 0), n.attr("transB", 0)
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)

    def f(ctx, a, b, c=None):
        if ta:
            a = a.t()
        if tb and alpha == 1.0 and beta == 1.0 and (c is None or c.dim() == 1 and c.shape[0] == b.shape[0]):
            return (F.linear(a, b, c),)
        y = a @ (b.t() if tb else b)
        if alpha != 1.0:
            y = y * alpha
        if c is not None:
            y = y + (c * beta if beta != 1.0 else c)
        return (y,)

    return f


@_op("Einsum")
def _einsum(n):
    eq = n.attr("equation").replace(" ", "")
    return lambda ctx, *xs: (torch.einsum(eq, *xs),)


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------

_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}




@_op("MaxPool")
def _max_pool(n):
    k = n.attr("kernel_shape")
    nsp = len(k)
    if nsp not in _MAXPOOL:
        raise _Unsupported(f"{nsp} spatial dims")
    if n.attr("storage_order", 0) and n.has_output(1):
        raise _Unsupported("storage_order=1 with Indices")
    s, d, ceil = n.attr("strides") or [1] * nsp, n.attr("dilations") or [1] * nsp, bool(n.attr("ceil_mode", 0))
    want_idx = n.has_output(1)
    auto_pad, pads = n.attr("auto_pad", "NOTSET"), n.attr("pads")

    def f(ctx, x):
        begins, ends = _conv_pads(auto_pad, pads, x.shape[2:], k, s, d)
        ok = begins == ends and all(p <= ((ki - 1) * di + 1) // 2 for p, ki, di in zip(begins, k, d))
        if not ok:
            if want_idx:
                raise UnsupportedOp("MaxPool Indices with asymmetric or large pads")
            x = F.pad(x, _torch_pad(begins, ends), value=float("-inf"))
            begins = [0] * nsp
        if not want_idx:
            return (_MAXPOOL[nsp](x, k, s, begins, d, ceil),)
        y, idx = _MAXPOOL[nsp](x, k, s, begins, d, ceil, return_indices=True)
        plane = math.prod(x.shape[2:])
        offs = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1], *[1] * nsp)
        return (y, idx + offs * plane)

    return f


@_op("AveragePool")
def _avg_pool(n):
    k = n.attr("kernel_shape")
    nsp = len(k)
    if nsp not in _AVGPOOL:
        raise _Unsupported(f"{nsp} spatial dims")
    d = n.attr("dilations") or [1] * nsp
    if any(v != 1 for v in d):
        raise _Unsupported("dilations")
    s, ceil = n.attr("strides") or [1] * nsp, bool(n.attr("ceil_mode", 0))
    include = bool(n.attr("count_include_pad", 0))
    auto_pad, pads = n.attr("auto_pad", "NOTSET"), n.attr("pads")

    def f(ctx, x):
        begins, ends = _conv_pads(auto_pad, pads, x.shape[2:], k, s, d)
        if begins == ends and all(p <= ki // 2 for p, ki in zip(begins, k)):
            return (_AVGPOOL[nsp](x, k, s, begins, ceil, include),)
        tp = _torch_pad(begins, ends)
        y = _AVGPOOL[nsp](F.pad(x, tp), k, s, 0, ceil, True)
        if include:
            return (y,)
        ones = F.pad(torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device), tp)
        return (y / _AVGPOOL[nsp](ones, k, s, 0, ceil, True),)

    return f


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(n):
    mx = n.op == "GlobalMaxPool"

    def f(ctx, x):
        dims = tuple(range(2, x.dim()))
        return (x.amax(dims, keepdim=True) if mx else x.mean(dims, keepdim=True),)

    return f


@_op("GlobalLpPool")
def _global_lp(n):
    p = n.attr("p", 2)
    return lambda ctx, x: (torch.linalg.vector_norm(x, p, dim=tuple(range(2, x.dim())), keepdim=True),)


# ---------------------------------------------------------------------------
# shape and indexing
# ---------------------------------------------------------------------------


@_op("Shape")
def _shape(n):
    start, end = n.attr("start", 0), n.attr("end", None)
    return lambda ctx, x: (torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device),)


@_op("Size")
def _size(n):
    return lambda ctx, x: (torch.tensor(x.numel(), dtype=torch.int64, device=x.device),)


@_op("Flatten")
def _flatten(n):
    axis = n.attr("axis", 1)

    def f(ctx, x):
        a = axis + x.dim() if axis < 0 else axis
        return (x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:])),)

    return f


@_op("Reshape")
def _reshape(n):
    allowzero = n.attr("allowzero", 0)
    attr_shape = n.attr("shape")

    def f(ctx, x, shape=None):
        s = _ints(shape) if shape is not None else list(attr_shape)
        if not allowzero:
            s = [x.shape[i] if v == 0 else v for i, v in enumerate(s)]
        return (x.reshape(s),)

    return f


@_op("Transpose")
def _transpose(n):
    perm = n.attr("perm")
    return lambda ctx, x: (x.permute(perm if perm is not None else list(range(x.dim() - 1, -1, -1))),)


@_op("Squeeze")
def _squeeze(n):
    old = n.opset < 13
    attr_axes = n.attr("axes") if old else None

    def f(ctx, x, axes=None):
        ax = attr_axes if old else _ints(axes)
        if not ax:
            return (x.squeeze(),)
        return (x.squeeze(tuple(a % x.dim() for a in ax)),)

    return f


@_op("Unsqueeze")
def _unsqueeze(n):
    old = n.opset < 13
    attr_axes = n.attr("axes") if old else None

    def f(ctx, x, axes=None):
        ax = attr_axes if old else _ints(axes)
        r = x.dim() + len(ax)
        for a in sorted(a % r for a in ax):
            x = x.unsqueeze(a)
        return (x,)

    return f


@_op("Concat")
def _concat(n):
    axis = n.attr("axis")

    def f(ctx, *xs):
        r = max(x.dim() for x in xs)
        return (torch.cat([x for x in xs if x.dim() == r or x.numel()], axis % r),)

    return f


@_op("Split")
def _split(n):
    axis, nout = n.attr("axis", 0), n.nout
    old = n.opset < 13
    attr_split = n.attr("split") if old else None
    num_outputs = n.attr("num_outputs")

    def f(ctx, x, split=None):
        a = axis % x.dim()
        sizes = attr_split if old else _ints(split)
        if not sizes:
            length = x.shape[a]
            if num_outputs:
                chunk = -(-length // num_outputs)
                sizes = [chunk] * (num_outputs - 1) + [length - chunk * (num_outputs - 1)]
            else:
                sizes = [length // nout] * nout
        return tuple(torch.split(x, list(sizes), a))

    return f


def _slice(x, starts, ends, axes, steps):
    r = x.dim()
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index: list[slice] = [slice(None)] * r
    flips = []
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax %= r
        dim = x.shape[ax]
        if sp == 0:
            raise ValueError("Slice step 0")
        st = st + dim if st < 0 else st
        en = en + dim if en < 0 else en
        if sp > 0:
            st, en = min(max(st, 0), dim), min(max(en, 0), dim)
            index[ax] = slice(st, en, sp)
        else:
            st, en = min(max(st, 0), dim - 1), min(max(en, -1), dim - 1)
            count = max(0, (st - en + (-sp) - 1) // (-sp))
            if count == 0:
                index[ax] = slice(0, 0)
            else:
                index[ax] = slice(st + (count - 1) * sp, st + 1, -sp)
                flips.append(ax)
    y = x[tuple(index)]
    return y.flip(flips) if flips else y


@_op("Slice")
def _slice_op(n):
    if n.opset < 10:
        starts, ends, axes = n.attr("starts"), n.attr("ends"), n.attr("axes")
        return lambda ctx, x: (_slice(x, starts, ends, axes, None),)
    return lambda ctx, x, starts, ends, axes=None, steps=None: (
        _slice(x, _ints(starts), _ints(ends), _ints(axes), _ints(steps)),)


@_op("Gather")
def _gather(n):
    axis = n.attr("axis", 0)

    def f(ctx, x, idx):
        a = axis % x.dim()
        if idx.dim() == 0:
            i = int(idx)
            return (x.select(a, i + x.shape[a] if i < 0 else i),)
        idx = torch.where(idx < 0, idx + x.shape[a], idx)
        y = torch.index_select(x, a, idx.reshape(-1))
        return (y.reshape(x.shape[:a] + idx.shape + x.shape[a + 1:]),)

    return f


@_op("GatherElements")
def _gather_elements(n):
    axis = n.attr("axis", 0)

    def f(ctx, x, idx):
        a = axis % x.dim()
        idx = torch.where(idx < 0, idx + x.shape[a], idx).long()
        return (torch.gather(x, a, idx),)

    return f


@_op("GatherND")
def _gather_nd(n):
    b = n.attr("batch_dims", 0)

    def f(ctx, x, idx):
        k = idx.shape[-1]
        bshape, rest = x.shape[:b], x.shape[b:]
        nb = math.prod(bshape)
        xf = x.reshape((nb,) + tuple(rest))
        idf = idx.reshape(nb, -1, k).long()
        idf = torch.where(idf < 0, idf + torch.tensor(rest[:k], device=idx.device), idf)
        bidx = torch.arange(nb, device=x.device).reshape(nb, 1)
        y = xf[(bidx,) + tuple(idf[..., j] for j in range(k))]
        return (y.reshape(tuple(idx.shape[:-1]) + tuple(rest[k:])),)

    return f


@_op("ScatterND")
def _scatter_nd(n):
    red = n.attr("reduction", "none")
    if red not in ("none", "add"):
        raise _Unsupported(f"reduction={red}")

    def f(ctx, x, idx, upd):
        k = idx.shape[-1]
        idx = idx.long()
        idx = torch.where(idx < 0, idx + torch.tensor(x.shape[:k], device=idx.device), idx)
        return (x.index_put(tuple(idx[..., j] for j in range(k)), upd, accumulate=red == "add"),)

    return f


@_op("ScatterElements", "Scatter")
def _scatter_elements(n):
    axis, red = n.attr("axis", 0), n.attr("reduction", "none")
    reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}.get(red)
    if red != "none" and reduce is None:
        raise _Unsupported(f"reduction={red}")

    def f(ctx, x, idx, upd):
        a = axis % x.dim()
        idx = torch.where(idx < 0, idx + x.shape[a], idx).long()
        if reduce is None:
            return (torch.scatter(x, a, idx, upd),)
        return (torch.scatter_reduce(x, a, idx, upd, reduce, include_self=True),)

    return f


@_op("Expand")
def _expand(n):
    def f(ctx, x, shape):
        return (x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape)))),)

    return f


@_op("Tile")
def _tile(n):
    return lambda ctx, x, reps: (x.repeat(_ints(reps)),)


@_op("ConstantOfShape")
def _constant_of_shape(n):
    v = n.attr("value")
    value = _tensor_to_torch(v).reshape(-1)[0] if v is not None else torch.tensor(0.0)

    def f(ctx, shape):
        return (torch.full(_ints(shape), value.item(), dtype=value.dtype, device=shape.device),)

    return f


@_op("Range")
def _range(n):
    def f(ctx, start, limit, delta):
        s, lim, d = _scalar(start), _scalar(limit), _scalar(delta)
        count = max(math.ceil((lim - s) / d), 0)
        return (torch.arange(count, dtype=start.dtype, device=start.device) * d + s,)

    return f


@_op("EyeLike")
def _eye_like(n):
    k, dt = n.attr("k", 0), n.attr("dtype")

    def f(ctx, x):
        r, c = x.shape
        m = torch.arange(c, device=x.device)[None, :] - torch.arange(r, device=x.device)[:, None] == k
        return (m.to(_torch_dtype(dt) if dt is not None else x.dtype),)

    return f


@_op("OneHot")
def _one_hot(n):
    axis = n.attr("axis", -1)

    def f(ctx, idx, depth, values):
        dep = int(_scalar(depth))
        idx = idx.long()
        idx = torch.where(idx < 0, idx + dep, idx)
        valid = (idx >= 0) & (idx < dep)
        oh = F.one_hot(idx.clamp(0, dep - 1), dep).bool() & valid.unsqueeze(-1)
        y = torch.where(oh, values[1], values[0])
        return (y.movedim(-1, axis % y.dim()),)

    return f


@_op("TopK")
def _topk(n):
    axis, largest, k_attr = n.attr("axis", -1), bool(n.attr("largest", 1)), n.attr("k")

    def f(ctx, x, k=None):
        kk = int(_scalar(k)) if k is not None else k_attr
        v, i = torch.topk(x, kk, axis, largest, True)
        return (v, i)

    return f


@_op("Trilu")
def _trilu(n):
    upper = n.attr("upper", 1)

    def f(ctx, x, k=None):
        kk = int(_scalar(k)) if k is not None else 0
        return (torch.triu(x, kk) if upper else torch.tril(x, kk),)

    return f


@_op("CumSum")
def _cumsum(n):
    exclusive, reverse = n.attr("exclusive", 0), n.attr("reverse", 0)

    def f(ctx, x, axis):
        a = int(_scalar(axis)) % x.dim()
        if reverse:
            x = x.flip(a)
        y = torch.cumsum(x, a, dtype=x.dtype)
        if exclusive:
            y = torch.cat([torch.zeros_like(y.narrow(a, 0, 1)), y.narrow(a, 0, y.shape[a] - 1)], a)
        return (y.flip(a) if reverse else y,)

    return f


@_op("DepthToSpace")
def _depth_to_space(n):
    b, mode = n.attr("blocksize"), n.attr("mode", "DCR")

    def f(ctx, x):
        N, C, H, W = x.shape
        if mode == "DCR":
            y = x.reshape(N, b, b, C // (b * b), H, W).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(N, C // (b * b), b, b, H, W).permute(0, 1, 4, 2, 5, 3)
        return (y.reshape(N, C // (b * b), H * b, W * b),)

    return f


@_op("SpaceToDepth")
def _space_to_depth(n):
    b = n.attr("blocksize")

    def f(ctx, x):
        N, C, H, W = x.shape
        y = x.reshape(N, C, H // b, b, W // b, b).permute(0, 3, 5, 1, 2, 4)
        return (y.reshape(N, C * b * b, H // b, W // b),)

    return f


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------


def _reduce_impl(op: str, x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    int_sum = not x.dtype.is_floating_point and x.dtype != torch.bool
    if op == "ReduceSum":
        return torch.sum(x, dims, keep, dtype=x.dtype if int_sum else None)
    if op == "ReduceMean":
        return torch.mean(x, dims, keep)
    if op == "ReduceMax":
        return torch.amax(x, dims, keep)
    if op == "ReduceMin":
        return torch.amin(x, dims, keep)
    if op == "ReduceProd":
        for d in sorted(dims, reverse=True):
            x = torch.prod(x, d, keep, dtype=x.dtype if int_sum else None)
        return x
    if op == "ReduceL1":
        return torch.sum(x.abs(), dims, keep, dtype=x.dtype if int_sum else None)
    if op == "ReduceL2":
        return torch.linalg.vector_norm(x, 2, dims, keep)
    if op == "ReduceSumSquare":
        return torch.sum(x * x, dims, keep, dtype=x.dtype if int_sum else None)
    if op == "ReduceLogSum":
        return torch.log(torch.sum(x, dims, keep))
    if op == "ReduceLogSumExp":
        return torch.logsumexp(x, dims, keep)
    raise AssertionError(op)


@_op("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
     "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
def _reduce(n):
    keep, noop = bool(n.attr("keepdims", 1)), n.attr("noop_with_empty_axes", 0)
    from_input = n.opset >= (13 if n.op == "ReduceSum" else 18)
    attr_axes = None if from_input else n.attr("axes")
    op = n.op

    def f(ctx, x, axes=None):
        ax = _ints(axes) if from_input else attr_axes
        if not ax:
            if noop:
                return (x,)
            ax = list(range(x.dim()))
        if x.dim() == 0:
            return (x,) if op not in ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum") else (
                _reduce_impl(op, x.reshape(1), [0], False),)
        return (_reduce_impl(op, x, sorted(a % x.dim() for a in ax), keep),)

    return f


@_op("ArgMax", "ArgMin")
def _argmax(n):
    axis, keep, last = n.attr("axis", 0), bool(n.attr("keepdims", 1)), n.attr("select_last_index", 0)
    fn = torch.argmax if n.op == "ArgMax" else torch.argmin

    def f(ctx, x):
        a = axis % x.dim()
        if last:
            i = fn(x.flip(a), a, keep)
            return (x.shape[a] - 1 - i,)
        return (fn(x, a, keep),)

    return f


# ---------------------------------------------------------------------------
# Pad, Resize, Upsample, GridSample
# ---------------------------------------------------------------------------


def _pad_index(n: int, b: int, e: int, mode: str) -> np.ndarray:
    i = np.arange(-b, n + e)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return np.mod(i, n)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    j = np.mod(i, period)
    return np.where(j >= n, period - j, j)


@_op("Pad")
def _pad(n):
    mode = n.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise _Unsupported(f"mode={mode}")
    old = n.opset < 11
    attr_pads, attr_value = n.attr("pads") if old else None, n.attr("value", 0.0)

    def f(ctx, x, pads=None, value=None, axes=None):
        r = x.dim()
        p = attr_pads if old else _ints(pads)
        if old:
            v = attr_value
        else:
            v = value.reshape(-1)[0].item() if value is not None and value.numel() else 0
        ax = list(range(r)) if axes is None else [a % r for a in _ints(axes)]
        begins, ends = [0] * r, [0] * r
        for j, a in enumerate(ax):
            begins[a], ends[a] = p[j], p[j + len(ax)]
        if mode == "constant":
            return (F.pad(x, _torch_pad(begins, ends), value=v),)
        for a in range(r):
            if begins[a] or ends[a]:
                idx = torch.from_numpy(_pad_index(x.shape[a], begins[a], ends[a], mode)).to(x.device)
                x = x.index_select(a, idx)
        return (x,)

    return f


def _orig_coords(ctm: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float]) -> np.ndarray:
    """Input coordinates of the output positions along one axis, in float32 like onnxruntime."""
    f32 = np.float32
    x = np.arange(out_len, dtype=f32)
    s = f32(scale)
    if ctm == "half_pixel":
        return (x + f32(0.5)) / s - f32(0.5)
    if ctm == "half_pixel_symmetric":
        adj = f32(out_len) / (s * f32(in_len))
        offset = f32(in_len) / f32(2) * (f32(1) - adj)
        return offset + (x + f32(0.5)) / s - f32(0.5)
    if ctm == "pytorch_half_pixel":
        return (x + f32(0.5)) / s - f32(0.5) if out_len > 1 else np.zeros(out_len, f32)
    if ctm == "align_corners":
        return np.zeros(out_len, f32) if out_len == 1 else x * f32(in_len - 1) / f32(out_len - 1)
    if ctm == "asymmetric":
        return x / s
    if ctm == "tf_half_pixel_for_nn":
        return (x + f32(0.5)) / s
    if ctm == "tf_crop_and_resize":
        a, b = f32(roi[0]), f32(roi[1])
        if out_len > 1:
            return a * f32(in_len - 1) + x * (b - a) * f32(in_len - 1) / f32(out_len - 1)
        return np.full(out_len, f32(0.5) * (a + b) * f32(in_len - 1), f32)
    raise ValueError(f"coordinate_transformation_mode={ctm}")


def _nearest_index(xo: np.ndarray, mode: str, down: bool) -> np.ndarray:
    if mode == "round_prefer_floor":
        t = np.trunc(xo)
        return np.where(xo == t + 0.5, t, np.sign(xo) * np.floor(np.abs(xo) + 0.5))
    if mode == "round_prefer_ceil":
        return np.sign(xo) * np.floor(np.abs(xo) + 0.5)
    if mode == "floor":
        return np.floor(xo)
    if mode == "ceil":
        return np.ceil(xo)
    if mode == "simple":  # Upsample and Resize-10 in onnxruntime
        return np.ceil(xo) if down else np.trunc(xo)
    raise ValueError(f"nearest_mode={mode}")


def _cubic_coeffs(s: np.ndarray, a: float) -> np.ndarray:
    """Weights of the taps at offsets -1, 0, 1, 2 for fractional positions ``s``."""
    s = s.astype(np.float64)
    t = [s + 1, s, 1 - s, 2 - s]
    w0 = ((a * t[0] - 5 * a) * t[0] + 8 * a) * t[0] - 4 * a
    w1 = ((a + 2) * t[1] - (a + 3)) * t[1] * t[1] + 1
    w2 = ((a + 2) * t[2] - (a + 3)) * t[2] * t[2] + 1
    w3 = ((a * t[3] - 5 * a) * t[3] + 8 * a) * t[3] - 4 * a
    return np.stack([w0, w1, w2, w3], -1)


def _along(w: np.ndarray, x: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return torch.from_numpy(np.ascontiguousarray(w)).to(device=x.device, dtype=x.dtype).reshape(shape)


def _resize_axis(x, axis, out_len, scale, roi, mode, ctm, nearest_mode, cubic_a, exclude, extrap):
    in_len = x.shape[axis]
    xo = _orig_coords(ctm, out_len, in_len, scale, roi)
    outside = None
    if ctm == "tf_crop_and_resize":
        bad = (xo < 0) | (xo > in_len - 1)
        outside = bad if bad.any() else None
    dev = x.device
    if mode == "nearest":
        idx = np.clip(_nearest_index(xo, nearest_mode, scale < 1), 0, in_len - 1).astype(np.int64)
        y = x.index_select(axis, torch.from_numpy(idx).to(dev))
    elif mode == "linear":
        if ctm != "tf_crop_and_resize":
            xo = np.clip(xo, 0, in_len - 1)
        i0 = np.clip(np.floor(xo), 0, in_len - 1).astype(np.int64)
        i1 = np.minimum(i0 + 1, in_len - 1)
        w = (xo - i0).astype(np.float32)
        a = x.index_select(axis, torch.from_numpy(i0).to(dev))
        b = x.index_select(axis, torch.from_numpy(i1).to(dev))
        y = a * _along(1 - w, x, axis) + b * _along(w, x, axis)
    else:  # cubic
        base = np.floor(xo).astype(np.int64)
        coeffs = _cubic_coeffs(xo - base, cubic_a)
        taps = base[:, None] + np.arange(-1, 3)[None, :]
        if exclude:
            coeffs = np.where((taps < 0) | (taps > in_len - 1), 0.0, coeffs)
            coeffs = coeffs / coeffs.sum(-1, keepdims=True)
        taps = np.clip(taps, 0, in_len - 1)
        y = None
        for j in range(4):
            term = x.index_select(axis, torch.from_numpy(taps[:, j].copy()).to(dev)) * _along(
                coeffs[:, j].astype(np.float32), x, axis)
            y = term if y is None else y + term
    if outside is not None:
        y = torch.where(_along(outside, x, axis).bool(), torch.full_like(y, extrap), y)
    return y


def _resize(x, scales, sizes, roi, axes, mode, ctm, nearest_mode, cubic_a, exclude, extrap, policy):
    r = x.dim()
    axes = list(range(r)) if axes is None else [a % r for a in axes]
    in_sz = [x.shape[a] for a in axes]
    if sizes is not None:
        if policy != "stretch":
            ratios = [np.float32(s) / np.float32(i) for s, i in zip(sizes, in_sz)]
            sc = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [int(math.floor(float(sc) * i + 0.5)) for i in in_sz]
            scales = [sc] * len(axes)
        else:
            scales = [np.float32(s) / np.float32(i) for s, i in zip(sizes, in_sz)]
        out_sz = list(sizes)
    else:
        out_sz = [int(np.float32(i) * np.float32(s)) for i, s in zip(in_sz, scales)]
    for j, a in enumerate(axes):
        rj = (roi[j], roi[j + len(axes)]) if roi is not None else (0.0, 1.0)
        if out_sz[j] == in_sz[j] and float(scales[j]) == 1.0 and ctm != "tf_crop_and_resize":
            continue
        x = _resize_axis(x, a, out_sz[j], float(scales[j]), rj, mode, ctm, nearest_mode, cubic_a, exclude, extrap)
    return x


@_op("Resize")
def _resize_op(n):
    mode = n.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise _Unsupported(f"mode={mode}")
    if n.attr("antialias", 0):
        raise _Unsupported("antialias=1")
    if n.opset < 11:
        ctm, nearest_mode = "asymmetric", "simple"
    else:
        ctm = n.attr("coordinate_transformation_mode", "half_pixel")
        nearest_mode = n.attr("nearest_mode", "round_prefer_floor")
    cubic_a, exclude = n.attr("cubic_coeff_a", -0.75), n.attr("exclude_outside", 0)
    extrap, policy, axes = n.attr("extrapolation_value", 0.0), n.attr("keep_aspect_ratio_policy", "stretch"), n.attr("axes")
    args = (mode, ctm, nearest_mode, cubic_a, exclude, extrap, policy)

    if n.opset < 11:
        return lambda ctx, x, scales: (_resize(x, scales.tolist(), None, None, None, *args),)

    def f(ctx, x, roi=None, scales=None, sizes=None):
        sc = scales.tolist() if scales is not None and scales.numel() else None
        sz = _ints(sizes) if sizes is not None and sizes.numel() else None
        rr = roi.tolist() if roi is not None and roi.numel() else None
        return (_resize(x, sc, sz, rr, axes, *args),)

    return f


@_op("Upsample")
def _upsample(n):
    mode = n.attr("mode", "nearest")
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear"):
        raise _Unsupported(f"mode={mode}")
    args = (mode, "asymmetric", "simple", -0.75, 0, 0.0, "stretch")
    attr_scales = n.attr("scales")
    if attr_scales is not None:
        return lambda ctx, x: (_resize(x, attr_scales, None, None, None, *args),)
    return lambda ctx, x, scales: (_resize(x, scales.tolist(), None, None, None, *args),)


@_op("GridSample")
def _grid_sample(n):
    mode = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest", "bicubic": "bicubic",
            "cubic": "bicubic"}.get(n.attr("mode", "bilinear" if n.opset < 20 else "linear"))
    pm, ac = n.attr("padding_mode", "zeros"), bool(n.attr("align_corners", 0))
    if mode is None:
        raise _Unsupported(f"mode={n.attr('mode')}")
    return lambda ctx, x, grid: (F.grid_sample(x, grid, mode, pm, ac),)


# ---------------------------------------------------------------------------
# control flow
# ---------------------------------------------------------------------------


@_op("If")
def _if(n):
    then_p, else_p = n.subprogram("then_branch"), n.subprogram("else_branch")

    def f(ctx, cond):
        return ctx.run(then_p if bool(cond.reshape(-1)[0]) else else_p)

    return f


@_op("Loop")
def _loop(n):
    body = n.subprogram("body")
    nv = n.nin - 2  # loop-carried values
    nscan = len(body.outputs) - 1 - nv

    def f(ctx, trip=None, cond=None, *carried):
        env = ctx.env
        limit = int(_scalar(trip)) if trip is not None else None
        go = bool(_scalar(cond)) if cond is not None else True
        vals = list(carried)
        scans: list[list[torch.Tensor]] = [[] for _ in range(nscan)]
        i = 0
        while go and (limit is None or i < limit):
            env[body.inputs[0]] = torch.tensor(i, dtype=torch.int64)
            env[body.inputs[1]] = torch.tensor(go)
            for s, v in zip(body.inputs[2:], vals):
                env[s] = v
            outs = ctx.run(body)
            go = bool(_scalar(outs[0]))
            vals = outs[1:1 + nv]
            for j, s in enumerate(outs[1 + nv:]):
                scans[j].append(s)
            i += 1
        stacked = [torch.stack(sc) if sc else torch.empty(0) for sc in scans]
        return (*vals, *stacked)

    return f


# ---------------------------------------------------------------------------
# recurrent layers
# ---------------------------------------------------------------------------

# name -> (function(x, alpha, beta), uses alpha, uses beta, default alpha, default beta)
_RNN_ACTS: dict[str, tuple[Callable, bool, bool, float, float]] = {
    "relu": (lambda x, a, b: torch.relu(x), False, False, 0.0, 0.0),
    "tanh": (lambda x, a, b: torch.tanh(x), False, False, 0.0, 0.0),
    "sigmoid": (lambda x, a, b: torch.sigmoid(x), False, False, 0.0, 0.0),
    "affine": (lambda x, a, b: a * x + b, True, True, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: F.leaky_relu(x, a), True, False, 0.01, 0.0),
    "thresholdedrelu": (lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x)), True, False, 1.0, 0.0),
    "scaledtanh": (lambda x, a, b: a * torch.tanh(b * x), True, True, 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: torch.clamp(a * x + b, 0, 1), True, True, 0.2, 0.5),
    "elu": (lambda x, a, b: F.elu(x, a), True, False, 1.0, 0.0),
    "softsign": (lambda x, a, b: F.softsign(x), False, False, 0.0, 0.0),
    "softplus": (lambda x, a, b: F.softplus(x), False, False, 0.0, 0.0),
}


def _rnn_activations(n: _NodeInfo, defaults: list[str], ndir: int) -> list[list[Callable]]:
    names = n.attr("activations") or defaults * ndir
    if len(names) == len(defaults) and ndir == 2:
        names = names * 2
    if len(names) != len(defaults) * ndir:
        raise _Unsupported(f"{len(names)} activations for {ndir} direction(s)")
    alphas, betas = list(n.attr("activation_alpha") or []), list(n.attr("activation_beta") or [])
    funcs = []
    for name in names:
        spec = _RNN_ACTS.get(name.lower())
        if spec is None:
            raise _Unsupported(f"activation {name}")
        fn, ua, ub, da, db = spec
        a = alphas.pop(0) if ua and alphas else da
        b = betas.pop(0) if ub and betas else db
        funcs.append(functools.partial(fn, a=a, b=b))
    k = len(defaults)
    return [funcs[d * k:(d + 1) * k] for d in range(ndir)]


def _reverse_time(x: torch.Tensor, lens: torch.Tensor | None) -> torch.Tensor:
    """Reverse each batch column of a [T, B, ...] tensor within its own length."""
    if lens is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device)[:, None]
    ln = lens.to(x.device).long()[None, :]
    idx = torch.where(t < ln, ln - 1 - t, t)
    idx = idx.reshape(idx.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return x.gather(0, idx)


def _rnn_common(n: _NodeInfo, kind: str):
    H = n.attr("hidden_size")
    direction = n.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise _Unsupported(f"direction={direction}")
    ndir = 2 if direction == "bidirectional" else 1
    defaults = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[kind]
    acts = _rnn_activations(n, defaults, ndir)
    clip = n.attr("clip")
    layout = n.attr("layout", 0)
    return H, direction, ndir, acts, clip, layout


def _cl(t: torch.Tensor, clip: float | None) -> torch.Tensor:
    return t if clip is None else t.clamp(-clip, clip)


def _run_direction(step, X, xw, h, lens, reverse):
    """Unroll ``step(xw_t, state) -> (out, state)`` over time with optional lengths."""
    T = X.shape[0]
    if reverse:
        xw = _reverse_time(xw, lens)
    outs = []
    valid = None if lens is None else (torch.arange(T, device=X.device)[:, None] < lens.to(X.device)[None, :])
    state = h
    for t in range(T):
        out, new = step(xw[t], state)
        if valid is not None:
            m = valid[t][:, None]
            new = tuple(torch.where(m, a, b) for a, b in zip(new, state))
            out = torch.where(m, out, torch.zeros_like(out))
        state = new
        outs.append(out)
    Y = torch.stack(outs) if outs else X.new_zeros((0, X.shape[1], h[0].shape[-1]))
    if reverse:
        Y = _reverse_time(Y, lens)
    return Y, state


@_op("LSTM")
def _lstm(n):
    H, direction, ndir, acts, clip, layout = _rnn_common(n, "LSTM")
    coupled = n.attr("input_forget", 0)

    def f(ctx, X, W, R, B=None, lens=None, h0=None, c0=None, P=None):
        if layout:
            X = X.transpose(0, 1)
            h0 = h0.transpose(0, 1) if h0 is not None else None
            c0 = c0.transpose(0, 1) if c0 is not None else None
        batch = X.shape[1]
        Ys, Hs, Cs = [], [], []
        for d in range(ndir):
            fa, ga, ha = acts[d]
            Rt = R[d].t()
            xw = X @ W[d].t()
            if B is not None:
                xw = xw + B[d][:4 * H] + B[d][4 * H:]
            h = h0[d] if h0 is not None else X.new_zeros(batch, H)
            c = c0[d] if c0 is not None else X.new_zeros(batch, H)
            pi, po, pf = (P[d][:H], P[d][H:2 * H], P[d][2 * H:]) if P is not None else (None, None, None)

            def step(xt, state, Rt=Rt, fa=fa, ga=ga, ha=ha, pi=pi, po=po, pf=pf):
                hp, cp = state
                g = xt + hp @ Rt
                i, o, fg, cc = g.split(H, -1)
                if pi is not None:
                    i, fg = i + pi * cp, fg + pf * cp
                i = fa(_cl(i, clip))
                fg = 1 - i if coupled else fa(_cl(fg, clip))
                cn = fg * cp + i * ga(_cl(cc, clip))
                if po is not None:
                    o = o + po * cn
                hn = fa(_cl(o, clip)) * ha(cn)
                return hn, (hn, cn)

            reverse = direction == "reverse" or d == 1
            Y, (h, c) = _run_direction(step, X, xw, (h, c), lens, reverse)
            Ys.append(Y)
            Hs.append(h)
            Cs.append(c)
        Y, Yh, Yc = torch.stack(Ys, 1), torch.stack(Hs), torch.stack(Cs)
        if layout:
            Y, Yh, Yc = Y.permute(2, 0, 1, 3), Yh.transpose(0, 1), Yc.transpose(0, 1)
        return (Y, Yh, Yc)

    return f


@_op("GRU")
def _gru(n):
    H, direction, ndir, acts, clip, layout = _rnn_common(n, "GRU")
    lbr = n.attr("linear_before_reset", 0)

    def f(ctx, X, W, R, B=None, lens=None, h0=None):
        if layout:
            X = X.transpose(0, 1)
            h0 = h0.transpose(0, 1) if h0 is not None else None
        batch = X.shape[1]
        Ys, Hs = [], []
        for d in range(ndir):
            fa, ga = acts[d]
            xw = X @ W[d].t()
            rb = None
            if B is not None:
                xw = xw + B[d][:3 * H]
                rb = B[d][3 * H:]
            Rzr, Rh = R[d][:2 * H].t(), R[d][2 * H:].t()
            rbzr = rb[:2 * H] if rb is not None else 0
            rbh = rb[2 * H:] if rb is not None else 0
            h = h0[d] if h0 is not None else X.new_zeros(batch, H)

            def step(xt, state, fa=fa, ga=ga, Rzr=Rzr, Rh=Rh, rbzr=rbzr, rbh=rbh):
                (hp,) = state
                xz, xr, xh = xt.split(H, -1)
                hz, hr = (hp @ Rzr + rbzr).split(H, -1)
                z = fa(_cl(xz + hz, clip))
                r = fa(_cl(xr + hr, clip))
                if lbr:
                    hh = ga(_cl(xh + r * (hp @ Rh + rbh), clip))
                else:
                    hh = ga(_cl(xh + (r * hp) @ Rh + rbh, clip))
                hn = (1 - z) * hh + z * hp
                return hn, (hn,)

            reverse = direction == "reverse" or d == 1
            Y, (h,) = _run_direction(step, X, xw, (h,), lens, reverse)
            Ys.append(Y)
            Hs.append(h)
        Y, Yh = torch.stack(Ys, 1), torch.stack(Hs)
        if layout:
            Y, Yh = Y.permute(2, 0, 1, 3), Yh.transpose(0, 1)
        return (Y, Yh)

    return f


@_op("RNN")
def _rnn(n):
    H, direction, ndir, acts, clip, layout = _rnn_common(n, "RNN")

    def f(ctx, X, W, R, B=None, lens=None, h0=None):
        if layout:
            X = X.transpose(0, 1)
            h0 = h0.transpose(0, 1) if h0 is not None else None
        batch = X.shape[1]
        Ys, Hs = [], []
        for d in range(ndir):
            (fa,) = acts[d]
            xw = X @ W[d].t()
            if B is not None:
                xw = xw + B[d][:H] + B[d][H:]
            Rt = R[d].t()
            h = h0[d] if h0 is not None else X.new_zeros(batch, H)

            def step(xt, state, fa=fa, Rt=Rt):
                hn = fa(_cl(xt + state[0] @ Rt, clip))
                return hn, (hn,)

            Y, (h,) = _run_direction(step, X, xw, (h,), lens, direction == "reverse" or d == 1)
            Ys.append(Y)
            Hs.append(h)
        Y, Yh = torch.stack(Ys, 1), torch.stack(Hs)
        if layout:
            Y, Yh = Y.permute(2, 0, 1, 3), Yh.transpose(0, 1)
        return (Y, Yh)

    return f


# ---------------------------------------------------------------------------
# quantization (QDQ): fake-quantization with a straight-through estimator
# ---------------------------------------------------------------------------


def _qparam(p: torch.Tensor, x: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against ``x`` (per-tensor, per-axis or blocked)."""
    if p.numel() == 1:
        return p.reshape(())
    a = axis % x.dim()
    if block and p.dim() == x.dim():
        return p.repeat_interleave(block, dim=a).narrow(a, 0, x.shape[a])
    return _bcast_to_axis(p, x.dim(), a)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _value_dtype(v: ir.Value | None) -> ir.DataType | None:
    if v is None:
        return None
    if v.const_value is not None:
        return v.const_value.dtype
    return v.dtype


@_op("QuantizeLinear")
def _quantize(n):
    axis, block = n.attr("axis", 1), n.attr("block_size", 0)
    node = n.node
    qtype = _value_dtype(node.inputs[2]) if n.nin > 2 and node.inputs[2] is not None else None
    if qtype is None:
        out_dt = n.attr("output_dtype", 0)
        qtype = ir.DataType(out_dt) if out_dt else (_value_dtype(node.outputs[0]) or _D.UINT8)
    if qtype not in _QRANGE:
        raise _Unsupported(f"quantized type {qtype.name}")
    qmin, qmax = _QRANGE[qtype]
    out = node.outputs[0]
    fake = not out.is_graph_output() and all(
        u.node.op_type == "DequantizeLinear" and u.idx == 0 for u in out.uses())
    tdt = _torch_dtype(qtype)

    def f(ctx, x, scale, zp=None):
        q = _round_ste(x / _qparam(scale, x, axis, block))
        if zp is not None:
            q = q + _qparam(zp, x, axis, block).to(q.dtype)
        q = torch.clamp(q, qmin, qmax)
        return (q if fake else q.detach().to(tdt),)

    return f


@_op("DequantizeLinear")
def _dequantize(n):
    axis, block = n.attr("axis", 1), n.attr("block_size", 0)

    def f(ctx, x, scale, zp=None):
        xf = x if x.dtype == scale.dtype else x.to(scale.dtype)
        if zp is not None:
            xf = xf - _qparam(zp, x, axis, block).to(xf.dtype)
        return (xf * _qparam(scale, x, axis, block),)

    return f
