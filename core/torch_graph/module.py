"""The trainable module (:class:`OnnxModule`), :func:`to_torch` and :func:`write_back`.

- Floating-point initializers, and the float tensors of ``Constant`` nodes with more than
  one element (some exporters, e.g. paddle2onnx for PP-OCR or spox for Silero, keep every
  weight there), become ``nn.Parameter``s, registered under sanitized names with a map
  back to the ONNX tensor names (:meth:`OnnxModule.tensor_names`).  Integer, boolean and
  one-element float constants are non-persistent buffers (they follow ``.to(device)``).
- Which parameters get ``requires_grad`` is decided by ``trainable(onnx_name)``; by default
  the tensors that act as weights are trainable and the tensors that are settings are not:
  BatchNormalization's running mean/variance, Q/DQ scales and zero points, Resize scales,
  Clip bounds, Pow exponents, Pad values, and one-element scalars not feeding a layer.

Going back needs no ``torch.onnx.export``: :func:`write_back` copies the parameter values
into the ONNX model's tensors (initializers, ``Constant`` node attributes) in place,
keeping their dtypes, so names, dynamic axes, the graph structure (pruned shapes
included) and everything else stay exactly as they were.  Both directions find the stored
tensors by one fixed walk (:func:`_sites`) and key them by kind, name and occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import onnx_ir as ir
import torch

from mcomp.errors import McompError
from mcomp.torch_graph.compiler import _all_graphs, _Compiler, _Ctx, _is_default_domain, _reads, _run, _topo_order
from mcomp.torch_graph.errors import _Unsupported, UnsupportedOp
from mcomp.torch_graph.tensors import _FLOAT_TYPES, _numel, _tensor_to_torch, _torch_to_numpy


# ---------------------------------------------------------------------------
# where the tensors live: initializers and Constant nodes, in a fixed walk order
# ---------------------------------------------------------------------------

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
# the module
# ---------------------------------------------------------------------------


class OnnxModule(torch.nn.Module):
    """A differentiable interpreter of an ONNX model (see the docstrings of this module and the package).

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
