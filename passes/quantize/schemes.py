"""Quantization schemes over one prepared graph: each lists the nodes it would quantize (units)
and builds a candidate with some of them left in float.

The builders are onnxruntime's: ``quantize_static`` (QDQ; calibrated once, the ranges cached
and reused for every later candidate), ``quantize_dynamic``, ``MatMulNBitsQuantizer`` and the
float16 converter. What mcomp adds is around them: which nodes, which types, and (in ``run``:
the accuracy budget and the latency guard) which candidates are kept.
"""

from __future__ import annotations

import abc

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from mcomp.passes.quantize.prepare import Prepared, quiet
from mcomp.passes.quantize.target import COMPUTE_OPS, INT8_FLOW_OPS, PASS_THROUGH_OPS

STATIC_OPS = COMPUTE_OPS + INT8_FLOW_OPS + PASS_THROUGH_OPS
DYNAMIC_OPS = ("MatMul", "Attention", "LSTM", "Gather")
WEIGHT_ONLY_OPS = ("MatMul", "Gather")


@dataclass
class Unit:
    """One node a scheme would quantize."""

    name: str
    op_type: str
    params: int  # elements of its float weight initializers
    macs: int | None = None
    depthwise: bool = False

    @property
    def compute(self) -> bool:
        return self.op_type in COMPUTE_OPS


@dataclass
class Scheme(abc.ABC):
    """Base: ``units`` and ``build(exclude)``; ``label`` describes the scheme in the report."""

    prepared: Prepared
    workdir: Path
    units: list[Unit] = field(default_factory=list)
    label: str = ""
    builds: int = 0
    guard_groups: bool = True  # whether the latency guard tries node groups, or only the whole candidate

    @property
    def source(self) -> Path:
        path = self.workdir / "prepared.onnx"
        if not path.exists():
            onnx.save_model(self.prepared.proto, str(path))
        return path

    def build(self, exclude: Iterable[str] = (), only: Iterable[str] | None = None) -> onnx.ModelProto:
        """A candidate with ``exclude`` left in float; or with only the units in ``only`` quantized."""
        out = self.workdir / f"candidate{self.builds}.onnx"
        self.builds += 1
        exclude = set(exclude) | set(self.prepared.float_only)
        with quiet():
            self._build(exclude, out, None if only is None else sorted(set(only) - exclude))
        proto = onnx.load(str(out))
        out.unlink()
        return _tidy(proto)

    @abc.abstractmethod
    def _build(self, exclude: set[str], out: Path, only: list[str] | None) -> None:
        """Writes the candidate to ``out``, with ``exclude`` left in float (or only ``only`` quantized)."""


class FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.feeds[start_index:end_index])

    def rewind(self) -> None:
        self._it = iter(self.feeds)


@dataclass
class Static(Scheme):
    feeds: list = field(default_factory=list)
    activations: str = "uint8"
    per_channel: bool = True
    symmetric: bool = False
    reduce_range: bool = False
    calibration: str = "minmax"
    percentile: float = 99.999
    op_types: tuple[str, ...] = STATIC_OPS

    def __post_init__(self):
        if self.calibration != "minmax" and self.feeds:
            # onnxruntime's histogram collector stacks every feed's arrays: a smaller last batch breaks it
            shapes = {k: np.shape(v) for k, v in self.feeds[0].items()}
            self.feeds = [f for f in self.feeds if {k: np.shape(v) for k, v in f.items()} == shapes]
        self.units = find_units(self.prepared, self.op_types, self.feeds[0] if self.feeds else None)
        self.label = (f"static QDQ, {'U8' if self.activations == 'uint8' else 'S8'}S8 "
                      f"({'symmetric' if self.symmetric else 'asymmetric'} activations), "
                      f"{'per-channel' if self.per_channel else 'per-tensor'} weights"
                      f"{', 7-bit range' if self.reduce_range else ''}, {self.calibration} calibration")

    def _build(self, exclude: set[str], out: Path, only: list[str] | None) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[self.calibration]
        extra = {"ActivationSymmetric": self.symmetric, "WeightSymmetric": True}
        if self.calibration == "percentile":
            extra["CalibPercentile"] = self.percentile
        cache = self.workdir / "calibration.json"
        if self.calibration == "entropy" and not cache.exists():
            self._calibrate_entropy(cache, method)
        quantize_static(str(self.source), str(out), FeedReader(self.feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(self.op_types), per_channel=self.per_channel,
                        reduce_range=self.reduce_range,
                        activation_type=QuantType.QUInt8 if self.activations == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=sorted(exclude), nodes_to_quantize=only,
                        calibrate_method=method,
                        calibration_cache_path=cache, extra_options=extra)

    def _calibrate_entropy(self, cache: Path, method) -> None:
        """KL-divergence ranges with 2048 histogram bins. ``quantize_static`` passes no bin counts to the
        calibrator, whose defaults (128 bins, 128 quantized bins) leave one candidate threshold — the full
        range, i.e. min-max; so the ranges are computed here and handed over through its cache."""
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

        calibrator = create_calibrator(self.source, list(self.op_types), augmented_model_path=self.workdir / "augmented.onnx",
                                       calibrate_method=method, extra_options={"num_bins": 2048, "num_quantized_bins": 128,
                                                                               "symmetric": self.symmetric})
        calibrator.collect_data(FeedReader(self.feeds))
        save_tensors_data(calibrator.compute_data(), cache)


@dataclass
class Dynamic(Scheme):
    per_channel: bool = False
    reduce_range: bool = False
    op_types: tuple[str, ...] = DYNAMIC_OPS

    def __post_init__(self):
        self.units = [u for u in find_units(self.prepared, self.op_types, None) if u.params > 0]
        self.label = (f"dynamic: int8 weights ({'per-channel' if self.per_channel else 'per-tensor'}), "
                      "uint8 activations quantized at run time")

    def _build(self, exclude: set[str], out: Path, only: list[str] | None) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(self.source), str(out), op_types_to_quantize=list(self.op_types),
                         per_channel=self.per_channel, reduce_range=self.reduce_range, weight_type=QuantType.QInt8,
                         nodes_to_exclude=sorted(exclude), nodes_to_quantize=only,
                         extra_options={"MatMulConstBOnly": True})


@dataclass
class WeightOnly(Scheme):
    bits: int = 4
    block_size: int = 128
    symmetric: bool = True
    accuracy_level: int | None = 4  # int8 activations in the kernel: the fast path on x86 and ARM
    op_types: tuple[str, ...] = WEIGHT_ONLY_OPS

    def __post_init__(self):
        inits = {t.name: t for t in self.prepared.proto.graph.initializer}
        gathers = [g for g in gather_tables(self.prepared.proto) if g not in self.prepared.float_only]
        if not gathers or (self.prepared.opset or 0) < 21:  # with Gather listed, the quantizer relabels the opset 21
            self.op_types = tuple(op for op in self.op_types if op != "Gather")
        self.units = [u for u in find_units(self.prepared, self.op_types, None)
                      if u.params > 0 and _weight_only_fits(self.prepared.proto, u.name, inits)]
        self.label = (f"weight-only int{self.bits}, blocks of {self.block_size} "
                      f"({'symmetric' if self.symmetric else 'asymmetric'}), MatMulNBits")

    def _build(self, exclude: set[str], out: Path, only: list[str] | None) -> None:
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        include = [u.name for u in self.units if u.name not in exclude and (only is None or u.name in only)]
        config = DefaultWeightOnlyQuantConfig(block_size=self.block_size, is_symmetric=self.symmetric,
                                              accuracy_level=self.accuracy_level, bits=self.bits,
                                              op_types_to_quantize=self.op_types)
        model = onnx.load(str(self.source))
        quantizer = MatMulNBitsQuantizer(model, bits=self.bits, block_size=self.block_size,
                                         is_symmetric=self.symmetric, accuracy_level=self.accuracy_level,
                                         nodes_to_exclude=sorted(exclude), nodes_to_include=include or ["-"],
                                         op_types_to_quantize=self.op_types, algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), False)


@dataclass
class Float16(Scheme):
    keep_io_types: bool = True

    def __post_init__(self):
        self.guard_groups = False  # float16 pays as a whole or not at all (Cast pairs at every boundary)
        self.units = [Unit(n.name, n.op_type, _params(self.prepared.proto, n)) for n in self.prepared.proto.graph.node
                      if n.name not in self.prepared.float_only]
        self.label = "float16 weights and compute" + (" (float32 inputs/outputs)" if self.keep_io_types else "")

    def _build(self, exclude: set[str], out: Path, only: list[str] | None) -> None:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        if only is not None:
            exclude = exclude | {u.name for u in self.units if u.name not in only}
        model = convert_float_to_float16(onnx.load(str(self.source)), keep_io_types=self.keep_io_types,
                                         node_block_list=sorted(exclude), disable_shape_infer=False)
        onnx.save_model(model, str(out))


def _tidy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """What onnxruntime's quantizers leave for others to fix: repeated node names (quantizing a partly
    quantized graph), and nodes out of order where a subgraph reads an outer value (their sort ignores
    subgraphs; onnxruntime loads it, the onnx checker and other runtimes do not)."""
    _unique_names(proto)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in proto.graph.node for a in n.attribute):
        import onnx_ir as ir

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


def find_units(prepared: Prepared, op_types: tuple[str, ...], feed) -> list[Unit]:
    """Top-level nodes of ``op_types`` not held in float, with their weight size, MACs and depthwise flag."""
    proto = prepared.proto
    inits = {t.name: t for t in proto.graph.initializer}
    macs = node_macs(proto, feed) if feed is not None else {}
    units = []
    for node in proto.graph.node:
        if node.op_type not in op_types or node.domain not in ("", "ai.onnx") or node.name in prepared.float_only:
            continue
        depthwise = False
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            depthwise = group > 1 and inits[node.input[1]].dims[1] == 1
        units.append(Unit(node.name, node.op_type, _params(proto, node, inits), macs.get(node.name), depthwise))
    return units


def node_macs(proto: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, int]:
    """MACs of Conv/ConvTranspose/Gemm/MatMul nodes at the shapes of ``feed`` (onnx shape inference)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.value_info[:]
    for inp in model.graph.input:
        if inp.name in feed:
            dims = inp.type.tensor_type.shape.dim
            for dim, size in zip(dims, np.shape(feed[inp.name])):
                dim.ClearField("dim_param")
                dim.dim_value = int(size)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        return {}
    shapes = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = [d.dim_value for d in t.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    out = {}
    for node in model.graph.node:
        ins = [shapes.get(i) for i in node.input]
        y = shapes.get(node.output[0]) if node.output else None
        if node.op_type == "Conv" and y and len(ins) > 1 and ins[1]:
            out[node.name] = int(np.prod(y)) * int(np.prod(ins[1][1:]))
        elif node.op_type == "ConvTranspose" and ins[0] and len(ins) > 1 and ins[1]:
            out[node.name] = int(np.prod(ins[0])) * int(np.prod(ins[1][1:]))
        elif node.op_type in ("MatMul", "Gemm") and y and ins[0]:
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            out[node.name] = int(np.prod(y)) * (ins[0][0] if trans_a else ins[0][-1])
    return out


def _params(proto, node, inits=None) -> int:
    inits = inits if inits is not None else {t.name: t for t in proto.graph.initializer}
    return sum(int(np.prod(inits[i].dims)) for i in node.input
               if i in inits and inits[i].data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))


def gather_tables(proto: onnx.ModelProto) -> list[str]:
    """Gather nodes reading a 2-D float initializer (embedding tables)."""
    inits = {t.name: t for t in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "Gather" and n.input and n.input[0] in inits
            and len(inits[n.input[0]].dims) == 2 and inits[n.input[0]].data_type == onnx.TensorProto.FLOAT]


def _weight_only_fits(proto, name, inits) -> bool:
    """MatMulNBits takes a 2-D constant B; Gather a 2-D constant table."""
    node = next(n for n in proto.graph.node if n.name == name)
    weight = node.input[1] if node.op_type == "MatMul" else node.input[0]
    return weight in inits and len(inits[weight].dims) == 2


def workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="mcomp-quantize-")
