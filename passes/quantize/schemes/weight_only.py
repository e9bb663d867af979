"""``--mode weight-only``: int4/int8 block-wise weights (MatMulNBits; GatherBlockQuantized for tables).

Activations stay float, so nothing is calibrated. MatMul + Add stays MatMul (MatMulNBits replaces
a MatMul with a 2-D constant B; ``matmul_form`` rewrites Gemms and transposed tables into that
form). Block-quantized Gather needs opset 21; onnxruntime's quantizer only relabels the opset
(leaving ops whose signature changed since, such as ReduceMean's axes, invalid), so the graph is
converted here — or Gather is left in float.

A size mode (``objective = "size"``): its kernels differ from float MatMul's and may be slower on
a CPU at batch 1, so the flow bounds the slowdown (``--max-slowdown``) instead of requiring a gain.
Block size and accuracy level form the candidate grid ``settings`` (``size_mode`` picks one): a
larger block stores fewer scales (smaller), the accuracy level changes only the kernel's compute
type, so the level variants of one block share one quantizer run (``build`` sets the attribute).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx

from mcomp.opset import upgrade_opset
from mcomp.passes.quantize import mapped_source
from mcomp.external_data import copy_fields
from mcomp.passes.quantize.schemes.base import Unchanged, register
from mcomp.passes.quantize.schemes.ort import OrtScheme, find_units

GATHER_OPSET = 21
SYMMETRIC = True
BLOCKS = (128, 64, 32)  # largest first: the smallest model first
# MatMulNBits' compute type, most accurate first: 1 = float32 (0, unset, is float32 too on CPU), 4 = int8
# activations (the fast path on x86 and ARM). Untimed (--no-latency-guard), the last that holds is kept.
LEVELS = (1, 4)


@register("weight-only")
class WeightOnly(OrtScheme):
    bits: ClassVar[tuple[int, ...]] = (4, 8)
    default_bits: ClassVar[int | None] = 4
    keep_matmul: ClassVar[bool] = True
    spills: ClassVar[bool] = True
    spills_any: ClassVar[bool] = True  # tables too: read where they are (``nbits_full``), inline for onnxruntime's
    objective: ClassVar[str] = "size"
    slowdown_bounded: ClassVar[bool] = True
    guard_groups: ClassVar[bool] = False

    @property
    def setting(self) -> tuple[int, int]:
        """(block size, accuracy level) of the candidates ``build`` returns; the label follows it."""
        return self._setting

    @setting.setter
    def setting(self, value: tuple[int, int]) -> None:
        self._setting = value
        self.label = self.describe()

    def settings(self) -> list[tuple[int, int]]:
        """(block size, accuracy level) candidates, smallest model first; a given option fixes its axis."""
        blocks = (self.cfg.block_size,) if self.cfg.block_size else BLOCKS
        levels = (self.cfg.accuracy_level,) if self.cfg.accuracy_level is not None else LEVELS
        return [(b, level) for b in blocks for level in levels]

    def setup(self, model, calibration) -> None:
        super().setup(model, calibration)
        self.write_source()  # now: the prepared graph then holds no weights while the pass's reference runs

    def adjust(self) -> None:
        from mcomp.passes.quantize.matmul_form import rewrite

        self.setting = self.settings()[0]
        self._raw: dict[int, onnx.ModelProto] = {}  # the current block size → every layer quantized
        prepared = self.prepared
        gemms = {n.name for n in prepared.proto.graph.node if n.op_type == "Gemm"}
        self.rewritten = rewrite(prepared.proto)
        prepared.aliases.update({n.name: (n.name, "Gemm") for n in prepared.proto.graph.node
                                 if n.op_type == "MatMul" and n.name in gemms})  # the MatMul keeps the Gemm's name
        counts = self.details["matmul_form"] = self.rewritten.counts()
        if counts["gemm"]:
            self.notes.append(f"{counts['gemm']} Gemm rewritten as MatMul + Add (MatMulNBits takes MatMul)")
        if counts["transposed"]:
            self.notes.append(f"{counts['transposed']} MatMul(s) reading a transposed table (a tied LM head) read "
                              "a transposed copy when quantized: the table is then stored once per consumer")
        if not gather_tables(prepared.proto) or (prepared.opset or 0) >= GATHER_OPSET:
            return
        try:
            prepared.proto = upgrade_opset(prepared.proto, GATHER_OPSET)
            self.notes.append(f"opset upgraded {prepared.opset} → {GATHER_OPSET} (block-quantized Gather needs "
                              "int4 tensors)")
            prepared.opset = GATHER_OPSET
        except ValueError as exc:
            for name in gather_tables(prepared.proto):
                prepared.float_only[name] = f"Gather: block quantization needs opset {GATHER_OPSET} and {exc}"

    def find(self):
        proto = self.prepared.proto
        inits = {t.name: t for t in proto.graph.initializer}
        gathers = [g for g in gather_tables(proto) if g not in self.prepared.float_only]
        self.op_types = ("MatMul", "Gather")
        if not gathers or (self.prepared.opset or 0) < GATHER_OPSET:  # with Gather listed, the quantizer relabels the opset
            self.op_types = ("MatMul",)
        return [u for u in find_units(self.prepared, self.op_types, None)
                if u.params > 0 and _fits(proto, u.name, inits)]

    def describe(self) -> str:
        block, level = self.setting
        return (f"weight-only int{self.cfg.bits or self.default_bits}, blocks of {block} "
                f"({'symmetric' if SYMMETRIC else 'asymmetric'}), MatMulNBits accuracy level {level}")

    def build(self, exclude=(), only=None) -> onnx.ModelProto:
        """The candidate at the current ``setting``: one quantizer run per block size (every layer), the
        candidate composed from it (``nbits_compose``), the accuracy level written onto it (it changes
        the kernel, not the weights)."""
        from mcomp.passes.quantize.nbits_compose import compose

        block, level = self.setting
        if block not in self._raw:
            # one block size at a time: the settings are tried block by block and the search goes on
            # in the last one, so an earlier block's quantizer output (0.4 GB at 2.5 GiB) is not held
            self._raw.clear()
            self._raw[block] = self._full()
        skip = set(exclude) | set(self.prepared.float_only)
        quantized = {u.name for u in self.units if u.name not in skip and (only is None or u.name in only)}
        proto = compose(self.prepared.proto, self._raw[block], quantized, self.cfg.bits or self.default_bits,
                        self.rewritten.transposed)
        mapped_source.inline_from(proto, self.workdir)  # the int4 weights, where float layers are in the input's folder
        if not _keeps_references(proto, self.workdir):
            mapped_source.inline_rest(proto)  # the weights of layers left float, read from ``source``'s file
        for node in proto.graph.node:
            if node.op_type == "MatMulNBits":
                kept = [a for a in node.attribute if a.name != "accuracy_level"]
                del node.attribute[:]
                node.attribute.extend([*kept, onnx.helper.make_attribute("accuracy_level", level)])
        return proto

    def _full(self) -> onnx.ModelProto:
        """Every layer quantized at the current block size: built here (``nbits_full``: the graph and bytes
        of onnxruntime's quantizer, from weights read where they are, on every core), or by onnxruntime's
        quantizer where ``nbits_full`` does not compute the case; ``builder`` in the report says which."""
        from mcomp.passes.quantize import nbits_full

        bits, block = self.cfg.bits or self.default_bits, self.setting[0]
        names = [u.name for u in self.units if u.name not in self.prepared.float_only]
        why = nbits_full.unsupported(self.prepared.proto, names, bits, block)
        self.details["builder"] = ("mcomp: composed MatMulNBits/GatherBlockQuantized graph" if why is None
                                   else f"onnxruntime's MatMulNBitsQuantizer ({why})")
        if why is not None:
            return super().build()
        # a big model's (its weights in files) int4 weights go to a file of the pass's, one per block size
        big = bool(mapped_source.reference_folders(self.prepared.proto))
        for old in self.workdir.glob("quantized-*.weights"):
            old.unlink()  # an earlier block's, which no candidate reads any more
        spill = self.workdir / f"quantized-{block}.weights" if big else None
        return nbits_full.build(self.prepared.proto, names, self.op_types, bits, block, self.ctx.threads, spill)

    def discard(self) -> None:
        self._raw.clear()

    @property
    def source(self) -> Path:
        return self.write_source()

    def write_source(self) -> Path:
        """The prepared graph for the quantizer, its MatMul weights in a data file it maps
        (``mapped_source``): not saved and parsed again whole per quantizer run. Once written, the
        prepared graph refers to that file too rather than holding a second copy of the weights for
        the rest of the pass; what runs it (``build``, ``layer_errors``) reads them back."""
        path = self.workdir / "prepared.onnx"
        if not path.exists():
            mapped_source.write(self.prepared.proto, path)
            self.prepared.proto = mapped_source.load(path)
        return path

    def layer_errors(self, candidate: onnx.ModelProto, live, feeds) -> list:
        from mcomp.passes.quantize.sensitivity import layer_errors

        if inline_bytes(self.prepared.proto) >= _protobuf_limit():  # the layers are exposed on inline models
            self.notes.append("--explain: no per-layer errors, which run the model inline, past protobuf's 2 GB here")
            return None

        reference = onnx.ModelProto()
        reference.CopyFrom(self.prepared.proto)
        mapped_source.inline_rest(reference)
        return layer_errors(reference, candidate, live, feeds, self.ctx.providers, self.ctx.progress)

    def _build(self, exclude: set[str], out: Path, only: list[str] | None) -> None:
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        bits, block = self.cfg.bits or self.default_bits, self.setting[0]
        include = [u.name for u in self.units if u.name not in exclude and (only is None or u.name in only)]
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=SYMMETRIC, accuracy_level=0,
                                              bits=bits, op_types_to_quantize=self.op_types)
        source = mapped_source.load(self.source)
        inits = {t.name: t for t in source.graph.initializer}
        for node in source.graph.node:  # its Gather reads a table with onnx's reader, which refuses a big
            if node.op_type == "Gather" and node.input[0] in inits:  # model's absolute locations
                mapped_source.inline(inits[node.input[0]])
        quantizer = MatMulNBitsQuantizer(source, bits=bits, block_size=block,
                                         is_symmetric=SYMMETRIC, accuracy_level=0,
                                         nodes_to_exclude=sorted(exclude), nodes_to_include=include or ["-"],
                                         op_types_to_quantize=self.op_types, algo_config=config)
        quantizer.node_quantizer = _threaded(quantizer.node_quantizer, config, self.ctx.threads)
        quantizer.process()
        mapped_source.inline_rest(quantizer.model.model)
        quantizer.model.save_model_to_file(str(out), False)


def _threaded(node_quantizer, config, threads: int | None):
    """onnxruntime's per-layer quantizer with its kernel call replaced by ``kernels.blockwise`` (the
    same bytes, on every core: 0.48 s rather than 1.3–1.8 s an 8192×8192 layer on 2 cores) where that
    computes the case; kept as it is when this onnxruntime's quantizer is not the one expected."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    from mcomp.kernels import blockwise

    if type(node_quantizer) is not DefaultWeightOnlyQuantizer or not hasattr(node_quantizer, "qbits_block_quant"):
        return node_quantizer

    class Threaded(DefaultWeightOnlyQuantizer):
        def qbits_block_quant(self, fp32weight):
            bits, block = self.config.bits, self.config.block_size
            if (not self.config.is_symmetric or self.config.quant_format != QuantFormat.QOperator
                    or not blockwise.supported(fp32weight, block, bits)):
                return super().qbits_block_quant(fp32weight)
            try:
                packed, scales = blockwise.quantize(fp32weight, block, bits, threads)
            except blockwise.NonFinite:
                return super().qbits_block_quant(fp32weight)
            per_byte = 8 // bits  # symmetric: onnxruntime's zero points are unused zeros
            return packed, scales, np.zeros((scales.shape[0], -(-scales.shape[1] // per_byte)), dtype=np.uint8)

    return Threaded(config)


def _keeps_references(proto: onnx.ModelProto, workdir: Path | None) -> bool:
    """Whether the candidate ``proto`` keeps its float layers as references to the input's data file
    (all in one folder, not the pass's ``workdir``, whose files go with it): it is then scored, timed
    and returned from there (``as_source``), never read inline. Read inline, a 2.5 GiB model's
    candidate with 7 of 10 layers float was 1.9 GB of protobuf, serialized and copied into its
    session again (9.4 GB peak); one past protobuf's 2 GB could not be made at all. Otherwise the
    float layers are read inline, and a candidate past 2 GB returns the input (``Unchanged``)."""
    folders = mapped_source.reference_folders(proto)
    if len(folders) == 1 and (workdir is None or not Path(next(iter(folders))).resolve().is_relative_to(
            Path(workdir).resolve())):
        return True
    size = inline_bytes(proto)
    if size >= _protobuf_limit():
        raise Unchanged(f"with layers left float a candidate is {size / (1 << 30):.1f} GiB, past protobuf's 2 GB "
                        "for one model, and its float weights are not all in the input's data file; it quantizes "
                        "such a model only with every layer quantized (a lower --min-fidelity, or no --exclude)")
    return False


def inline_bytes(proto: onnx.ModelProto) -> int:
    """About the bytes of ``proto`` with the tensors it refers to read inline (a big model's candidate
    reads its float layers from the input's data file): the candidate sizes ``size_mode`` reports, and
    the 2 GB check. Counted, not serialized (``serialized_size``)."""
    return serialized_size(proto) + sum(int(e.value) for t in proto.graph.initializer for e in t.external_data
                                        if e.key == "length")


def _protobuf_limit() -> int:
    from mcomp.model import PROTOBUF_LIMIT  # read at the call: a test lowers it

    return PROTOBUF_LIMIT


def serialized_size(proto: onnx.ModelProto) -> int:
    """About the bytes ``proto`` serializes to (within a few bytes a tensor): its raw weights counted
    as their lengths. ``ByteSize()`` walks every byte (0.37 s a 100 MB candidate; five candidates
    were ~1 s of a 0.75 GiB model's weight-only quantize), and this guards a 2 GB limit."""
    copy = onnx.ModelProto()
    copy_fields(proto, copy, skip={"graph"})
    copy_fields(proto.graph, copy.graph, skip={"initializer"})
    size = copy.ByteSize()
    for tensor in proto.graph.initializer:
        if tensor.HasField("raw_data"):  # its fields but the data, and the data's length and tag
            size += len(tensor.name) + len(tensor.doc_string) + 16 * len(tensor.dims) + 64 + len(tensor.raw_data)
        else:
            size += tensor.ByteSize()
    return size


def gather_tables(proto: onnx.ModelProto) -> list[str]:
    """Gather nodes reading a 2-D float initializer (embedding tables)."""
    inits = {t.name: t for t in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "Gather" and n.input and n.input[0] in inits
            and len(inits[n.input[0]].dims) == 2 and inits[n.input[0]].data_type == onnx.TensorProto.FLOAT]


def _fits(proto: onnx.ModelProto, name: str, inits) -> bool:
    """MatMulNBits takes a 2-D constant B; Gather a 2-D constant table."""
    node = next(n for n in proto.graph.node if n.name == name)
    weight = node.input[1] if node.op_type == "MatMul" else node.input[0]
    return weight in inits and len(inits[weight].dims) == 2
