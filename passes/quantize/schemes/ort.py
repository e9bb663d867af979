"""Schemes whose candidates onnxruntime's quantizers build from one prepared graph.

The builders are onnxruntime's (``quantize_static``, ``quantize_dynamic``, ``MatMulNBitsQuantizer``,
the float16 converter); what a subclass declares is what the graph needs first: the ``opset`` it
needs (13 whenever weights get one scale per output channel), whether MatMul + Add must stay
MatMul (``keep_matmul``: the dynamic and weight-only kernels take MatMul), whether it takes
``per_channel`` weights, and then which nodes it quantizes (``find``) and how (``_build``).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar, Iterable

import numpy as np
import onnx
import onnx_ir as ir

from mcomp import graph
from mcomp.external_data import mapped_in_memory
from mcomp.errors import BadInput, short
from mcomp.passes.quantize import prepare as prep
from mcomp.passes.quantize import fallback, record
from mcomp.passes.quantize.exclusions import excluded_nodes
from mcomp.passes.quantize.schemes.base import Scheme, Unchanged, Unit

PER_CHANNEL_OPSET = 13  # Q/DQ take an ``axis`` from opset 13


class OrtScheme(Scheme):
    """A scheme over a graph prepared for onnxruntime's quantizer; units are top-level node names."""

    opset: ClassVar[int | None] = None  # the opset it needs with per-tensor weights
    keep_matmul: ClassVar[bool] = False
    spills: ClassVar[bool] = False  # a big model's MatMul weights stay in files (``prepare``'s ``spill``)
    spills_any: ClassVar[bool] = False  # and every other big weight (``prepare``'s ``spill_any``)
    takes_per_channel: ClassVar[bool] = False

    def setup(self, model: ir.Model, calibration) -> None:
        from mcomp.sources import weight_bytes

        if not self.spills:
            self.fits_one_protobuf(weight_bytes(model))
        self.calibration = calibration
        self.prepared, self.per_channel = self._prepare(model)
        self.notes += self.prepared.notes
        self.adjust()
        self.units = self.find()
        self.label = self.describe()
        self.user = excluded_nodes(self.cfg.exclude, self.prepared.proto, self.prepared.aliases)
        prepared = self.prepared
        self.details.update({
            "mode": self.name, "scheme": self.label, "target": self.target.describe(),
            "opset": {"input": prepared.opset_before, "output": prepared.opset},
            "shape_inference": prepared.shape_inference, "per_channel": self.per_channel,
            "candidate_layers": len(self.units),
            "float_reasons": [{"node": n, "reason": r} for n, r in prepared.float_only.items()]
                             + [{"node": n, "reason": "--exclude"} for n in sorted(self.user)]})

    def fits_one_protobuf(self, weights: int) -> None:
        """onnxruntime's quantizers read and write the whole model as one protobuf, which cannot pass 2 GB:
        past it the input is returned with that reason (it was an internal error, protobuf's EncodeError,
        after the model had been copied in memory)."""
        from mcomp.model import PROTOBUF_LIMIT

        if weights >= PROTOBUF_LIMIT:
            self.notes.append(f"{self.name}: onnxruntime's quantizer takes the model as one protobuf, which cannot "
                              f"pass 2 GB, and this one holds {weights / (1 << 30):.2f} GiB of weights; "
                              + ("try --mode dynamic on a graph of MatMuls, or " if self.name != "dynamic" else "")
                              + "--mode weight-only, which keep the weights in their files")
            raise Unchanged("past protobuf's 2 GB, which onnxruntime's quantizer needs in one piece")

    def _prepare(self, model: ir.Model) -> tuple[prep.Prepared, bool]:
        """The prepared graph; per-channel falls back to per-tensor when the opset cannot be upgraded."""
        per_channel = self.cfg.per_channel and self.takes_per_channel
        spill = self.workdir / "prepared.weights" if self.spills else None
        try:
            return prep.prepare(model, opset=PER_CHANNEL_OPSET if per_channel else self.opset,
                                keep_matmul=self.keep_matmul, spill=spill, spill_any=self.spills_any), per_channel
        except ValueError as exc:
            if not per_channel:
                raise BadInput(f"quantize: {exc}") from None
            self.notes.append(f"per-channel needs opset {PER_CHANNEL_OPSET} and {exc}; quantized per-tensor instead")
            return prep.prepare(model, opset=self.opset, keep_matmul=self.keep_matmul, spill=spill,
                                spill_any=self.spills_any), False

    def adjust(self) -> None:
        """Mode-specific changes to the prepared graph, before its units are listed."""

    @abc.abstractmethod
    def find(self) -> list[Unit]:
        """The nodes this scheme would quantize."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The scheme's label in the report."""

    @abc.abstractmethod
    def _build(self, exclude: set[str], out: Path, only: list[str] | None) -> None:
        """Writes the candidate to ``out``, with ``exclude`` left in float (or only ``only`` quantized)."""

    @property
    def source(self) -> Path:
        path = self.workdir / "prepared.onnx"
        if not path.exists():
            onnx.save_model(self.prepared.proto, str(path))
        return path

    def build(self, exclude: Iterable[str] = (), only: Iterable[str] | None = None) -> onnx.ModelProto:
        out = self.workdir / f"candidate{self.builds}.onnx"
        self.builds += 1
        exclude = set(exclude) | set(self.prepared.float_only)
        for _ in range(len(self.units) + 1):
            chosen = None if only is None else sorted(set(only) - exclude)
            try:
                with prep.quiet():
                    self._build(exclude, out, chosen)
                break
            except Exception as exc:  # noqa: BLE001 - onnxruntime's quantizer raises anything; others re-raise
                exclude.add(self._failed_on(exc, exclude, chosen))
        proto = onnx.load(str(out))
        out.unlink()
        return tidy(proto)

    def _failed_on(self, exc: Exception, exclude: set[str], only: list[str] | None) -> str:
        """The node onnxruntime's quantizer failed on, now held in float with the reason; re-raises what
        is not the quantizer's failure on a node (the input is then returned unchanged)."""
        if not fallback.inside_quantizer(exc):
            raise exc
        candidates = [u.name for u in self.units if u.name not in exclude and (only is None or u.name in only)]
        node = fallback.named_node(exc, candidates) or fallback.bisect(
            lambda more: self._fails(exclude | more, only), candidates)
        why = f"{type(exc).__name__}: {short(exc, 120)}"
        if node is None:
            self.notes.append(f"onnxruntime's quantizer failed on this graph ({why}), not on one node of it")
            raise Unchanged("onnxruntime's quantizer failed") from exc
        op = next(u.op_type for u in self.units if u.name == node)
        self.prepared.float_only[node] = f"onnxruntime's quantizer failed on it ({why})"
        self.details.setdefault("float_reasons", []).append({"node": node, "reason": self.prepared.float_only[node]})
        self.notes.append(f"node {node} ({op}) left float: onnxruntime's quantizer failed on it ({why})")
        self.units = [u for u in self.units if u.name != node]  # no longer quantizable: counted with the float ops
        self.details["candidate_layers"] = len(self.units)
        return node

    def _fails(self, exclude: set[str], only: list[str] | None) -> bool:
        """Building with ``exclude`` in float still raises."""
        try:
            with prep.quiet():
                self._build(exclude, self.workdir / "probe.onnx", None if only is None else sorted(set(only) - exclude))
        except Exception:  # noqa: BLE001 - any failure counts while looking for the node
            return True
        return False

    def groups(self, live: list[Unit]) -> list:
        from mcomp.passes.quantize.sensitivity import layer_groups

        return layer_groups(self.prepared.proto, live)

    def layer_errors(self, candidate: onnx.ModelProto, live: list[Unit], feeds) -> list:
        from mcomp.passes.quantize.sensitivity import layer_errors

        return layer_errors(self.prepared.proto, candidate, live, feeds, self.ctx.providers, self.ctx.progress)

    def result(self, proto: onnx.ModelProto, excluded: set[str]) -> ir.Model:
        """The chosen candidate. A weight it reads from the pass's own files (a big model's int8 weights, or a
        float weight the input's file does not hold: from a checkpoint, or changed by onnxruntime's
        optimizer) is mapped now, so that its pages outlive the pass's folder (it pointed into a deleted
        folder: FileNotFoundError after the pass); weights in the input's file stay referred to there."""
        model = ir.serde.deserialize_model(proto)
        own = self.workdir.resolve()
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor) and own in Path(tensor.path).resolve().parents:
                value.const_value = mapped_in_memory(tensor)
        return model

    def outcome(self, model, result, excluded, score, evaluator, verdict) -> str:
        summary, details = record.outcome(model, result, self, excluded, score, evaluator, verdict)
        self.details.update(details)
        return summary


def find_units(prepared: prep.Prepared, op_types: tuple[str, ...], feed) -> list[Unit]:
    """Top-level nodes of ``op_types`` not held in float, with their weight size, MACs and depthwise flag."""
    proto = prepared.proto
    inits = {t.name: t for t in proto.graph.initializer}
    macs = graph.macs_by_node(proto, {k: np.shape(v) for k, v in feed.items()}) if feed is not None else {}
    units = []
    for node in proto.graph.node:
        if node.op_type not in op_types or node.domain not in ("", "ai.onnx") or node.name in prepared.float_only:
            continue
        depthwise = False
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            depthwise = group > 1 and inits[node.input[1]].dims[1] == 1
        units.append(Unit(node.name, node.op_type, params(proto, node, inits), macs.get(node.name), depthwise))
    return units


def params(proto: onnx.ModelProto, node: onnx.NodeProto, inits=None) -> int:
    """Elements of ``node``'s float weight initializers."""
    inits = inits if inits is not None else {t.name: t for t in proto.graph.initializer}
    return sum(int(np.prod(inits[i].dims)) for i in node.input
               if i in inits and inits[i].data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))


def tidy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """What onnxruntime's quantizers leave for others to fix: repeated node names (quantizing a partly
    quantized graph), and nodes out of order where a subgraph reads an outer value (their sort ignores
    subgraphs; onnxruntime loads it, the onnx checker and other runtimes do not)."""
    _unique_names(proto)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in proto.graph.node for a in n.attribute):
        model = ir.serde.deserialize_model(proto)
        model.graph.sort()
        proto = ir.serde.serialize_model(model)
    return proto


def _unique_names(proto: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for node in proto.graph.node:
        if node.name and node.name in seen:
            base, i = node.name, 1
            while f"{base}_{i}" in seen:
                i += 1
            node.name = f"{base}_{i}"
        seen.add(node.name)
