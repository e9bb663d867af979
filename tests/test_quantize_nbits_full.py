"""Weight-only models built by mcomp (``nbits_full``, ``kernels.blockwise``, ``kernels.table_int4``): every
candidate the pass writes is the graph and the bytes onnxruntime's ``MatMulNBitsQuantizer`` gives it."""

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer

from mcomp.kernels import table_int4
from mcomp.model import load
from mcomp.pass_base import Context
from mcomp.passes.quantize import Quantize, nbits_full
from test_quantize_dynamic_compose import nodes_of, tensors_of, with_a_tied_table

CPU = ["CPUExecutionProvider"]
COMPOSED = "mcomp: composed MatMulNBits/GatherBlockQuantized graph"


def tables() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    odd = rng.standard_normal((300, 64)).astype(np.float32)
    odd[5, 3], odd[7] = np.nan, np.inf
    return {"normal": rng.standard_normal((1000, 256)).astype(np.float32), "zeros": np.zeros((300, 64), np.float32),
            "positive": np.abs(rng.standard_normal((300, 128))).astype(np.float32),
            "negative": -np.abs(rng.standard_normal((300, 128))).astype(np.float32),
            "halves": (rng.integers(-16, 16, (300, 64)) / 2).astype(np.float32),
            "ties": np.tile(np.float32([-2, 2]), (40, 32)), "denormal": np.full((10, 32), 1e-42, np.float32),
            "nan and inf": odd}


@pytest.mark.parametrize("block", [16, 32, 64, 128])
def test_tables_are_onnxruntimes_bytes(block):
    """Row slices on two threads, against onnxruntime's whole-table numpy: zeros (scale 0), one sign, values
    on halves (numpy rounds them to even), a ± tie (the minimum is the peak), denormals, NaN and infinity."""
    for name, table in tables().items():
        if table.shape[1] % block:
            continue
        with np.errstate(all="ignore"):
            q, scales, _ = DefaultWeightOnlyQuantizer.quantize_ndarray(table, 1, block, True)
        ours, our_scales = table_int4.quantize(table, block, threads=2)
        assert ours.dtype == q.dtype and ours.tobytes() == q.tobytes(), name
        assert our_scales.shape == scales.shape and our_scales.tobytes() == scales.tobytes(), name


def weight_only(model, monkeypatch, compare: bool, **options):
    """The pass's result built here, and (``compare``) by onnxruntime's quantizer, as models."""
    ctx = Context(providers=CPU)
    options = {"mode": "weight-only", "latency_guard": False, "min_fidelity": 0.0, "accuracy_level": 4, **options}
    ours = Quantize(**options)(ir.serde.deserialize_model(model) if not isinstance(model, ir.Model) else model, ctx)
    assert ours.details["builder"] == COMPOSED
    if not compare:
        return ours, None
    monkeypatch.setattr(nbits_full, "unsupported", lambda *args: "onnxruntime's, to compare")
    again = ir.serde.deserialize_model(model) if not isinstance(model, ir.Model) else model
    theirs = Quantize(**options)(again, ctx)
    assert theirs.details["builder"].startswith("onnxruntime's MatMulNBitsQuantizer")
    monkeypatch.undo()
    return ours, theirs


def same(ours, theirs) -> None:
    a, b = (ir.serde.serialize_model(r.model) for r in (ours, theirs))
    assert nodes_of(a) == nodes_of(b)
    assert [(o.domain, o.version) for o in a.opset_import] == [(o.domain, o.version) for o in b.opset_import]
    assert a.ir_version == b.ir_version
    x, y = tensors_of(a), tensors_of(b)
    assert sorted(x) == sorted(y)
    assert all(x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes() for k in x)


@pytest.mark.parametrize("block", [32, 64])
@pytest.mark.parametrize("exclude", [[], ["embed"], ["head"], ["m1", "m3"]])
def test_a_candidate_with_a_tied_table_is_onnxruntimes(monkeypatch, block, exclude):
    """An embedding table read by a Gather and, transposed, by a tied head; a weight read by two MatMuls."""
    ours, theirs = weight_only(with_a_tied_table(), monkeypatch, True, block_size=block, exclude=exclude)
    assert ours.modified
    ops = [n.op_type for n in ours.model.graph]
    assert ("GatherBlockQuantized" in ops) == ("embed" not in exclude)
    same(ours, theirs)


def test_a_nan_weight_goes_to_onnxruntimes_kernel_with_the_same_bytes(monkeypatch):
    model = with_a_tied_table()
    weight = next(t for t in model.graph.initializer if t.name == "w0")
    array = numpy_helper.to_array(weight).copy()
    array[3, 1] = np.nan
    weight.CopyFrom(numpy_helper.from_array(array, "w0"))
    with np.errstate(all="ignore"):
        ours, theirs = weight_only(model, monkeypatch, True, block_size=32, exclude=["embed"])
    same(ours, theirs)


@pytest.mark.parametrize("rows", [1, 2, 33, 40, 47, 63, 64])
@pytest.mark.parametrize("bits", [4, 8])
def test_rows_that_are_not_whole_blocks_are_onnxruntimes_bytes(rows, bits):
    """onnxruntime pads the rows to whole blocks and leaves the pad's bytes 0; an odd last row of 4 bits
    (its pad nibble filled onnxruntime's own way) is quantized by its kernel."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

    weight = np.random.default_rng(rows).standard_normal((rows, 5)).astype(np.float32)
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=bits)
    packed, scales, _ = DefaultWeightOnlyQuantizer(config).qbits_block_quant(weight)
    ours = nbits_full._matmul_weight(numpy_helper.from_array(weight, "w"), bits, 32, None)
    assert [numpy_helper.to_array(t).tobytes() for t in ours] == [packed.tobytes(), scales.tobytes()]


def test_what_is_not_computed_here_goes_to_onnxruntime():
    """A table with a shorter last block and a float16 weight go to onnxruntime; rows that are not whole
    blocks (padded) and int8 tables (left float) are built here."""
    model = with_a_tied_table()
    names = ["embed", "m0", "m1"]
    assert nbits_full.unsupported(model, names, 4, 32) is None
    assert nbits_full.unsupported(model, ["m0", "m1"], 4, 128) is None  # 64 and 32 rows: padded, as onnxruntime does
    assert "columns are not whole blocks of 128" in nbits_full.unsupported(model, ["embed"], 4, 128)
    assert "power of two" in nbits_full.unsupported(model, ["embed"], 4, 48)  # onnxruntime asserts it
    assert nbits_full.unsupported(model, ["embed"], 8, 128) is None
    half = next(t for t in model.graph.initializer if t.name == "w1")
    half.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(half).astype(np.float16), "w1"))
    assert "no 2-D float32 weight" in nbits_full.unsupported(model, names, 4, 32)


@pytest.mark.parametrize("name, bits", [("gpt2", 4), ("gpt2", 8), ("vit", 4)])
def test_real_transformers_are_built_as_onnxruntime_quantizes_them(monkeypatch, name, bits):
    """GPT-2 (opset 18, dynamo): 16 Gemms rewritten as MatMul + Add, its embedding tables as
    GatherBlockQuantized (int4; int8 leaves them float, as onnxruntime does) and its tied head on a
    transposed copy; ViT's MatMuls and classifier."""
    import transformer_models as tm

    path = tm.build(name).path
    ours, theirs = weight_only(load(path).model, monkeypatch, False, bits=bits, block_size=32)
    monkeypatch.setattr(nbits_full, "unsupported", lambda *args: "onnxruntime's, to compare")
    theirs = Quantize(mode="weight-only", latency_guard=False, min_fidelity=0.0, accuracy_level=4, bits=bits,
                      block_size=32)(load(path).model, Context(providers=CPU))
    ops = [n.op_type for n in ours.model.graph]
    assert ops.count("MatMulNBits") >= 16
    assert ("GatherBlockQuantized" in ops) == (name == "gpt2" and bits == 4)
    same(ours, theirs)


def test_a_big_llms_table_and_head_are_built_from_their_file(tmp_path, monkeypatch):
    """A model treated as big: its table stays in its file (``spills_any``) and is read from there, by
    ``nbits_full`` and, inline, by onnxruntime's quantizer."""
    from helpers import treated_as_big
    import big_models

    path = tmp_path / "llm.onnx"
    big_models.build_llm(path, layers=1, dim=64, vocab=96)
    treated_as_big(monkeypatch)
    ours, _ = weight_only(load(path).model, monkeypatch, False, block_size=32)
    # onnxruntime's quantizer reads the table inline (its reader refuses the absolute location): the same model
    monkeypatch.setattr(nbits_full, "unsupported", lambda *args: "onnxruntime's, to compare")
    theirs = Quantize(mode="weight-only", latency_guard=False, min_fidelity=0.0, accuracy_level=4, block_size=32)(
        load(path).model, Context(providers=CPU))
    same(ours, theirs)
    assert ours.modified
    ops = [n.op_type for n in ours.model.graph]
    assert ops.count("GatherBlockQuantized") == 1 and ops.count("MatMulNBits") == 2
    head = next(n for n in ours.model.graph if n.name == "lm_head_Q4")  # the transposed table's int4 copy
    assert head.op_type == "MatMulNBits" and head.inputs[1].name.startswith("table")
    assert TensorProto.INT4 in {v.const_value.dtype.value for v in ours.model.graph.initializers.values()}


def test_a_mapped_int4_tensor_stays_packed_in_memory(tmp_path):
    """What the pipeline maps out of a temp file before it goes (``mapped_in_memory``): an int4 tensor stays
    packed (onnx_ir's ``numpy()`` unpacks it into a copy of one byte a value), its values and bytes kept."""
    import os

    from mcomp.external_data import mapped_in_memory

    values = np.random.default_rng(2).integers(-8, 8, (64, 33)).astype(np.int8)
    packed = ir._type_casting.pack_4bitx2(values).tobytes()
    path = tmp_path / "w.bin"
    path.write_bytes(b"head" + packed)
    tensor = ir.ExternalTensor(str(path), 4, len(packed), ir.DataType.INT4, shape=ir.Shape([64, 33]), name="t")
    kept = mapped_in_memory(tensor)
    os.remove(path)
    assert isinstance(kept, ir.PackedTensor) and kept.tobytes() == packed
    assert np.array_equal(kept.numpy().astype(np.int8), values)
    proto = ir.serde.serialize_tensor(kept)
    assert proto.data_type == TensorProto.INT4 and list(proto.dims) == [64, 33] and proto.raw_data == packed


@pytest.mark.parametrize("bits, rows", [(4, 64), (8, 64), (4, 72)])
def test_an_int4_weight_counts_its_values_not_its_bytes(bits, rows):
    """The report's parameters and non-zeros of a MatMulNBits weight are its K×N values and those not
    at the zero point (the padding of a last block left out): read against the weight onnxruntime
    computes with (the layer's output for an identity input, at accuracy level 1: float)."""
    from onnx import helper as h

    from mcomp.summary import tensor_counts

    rng = np.random.default_rng(bits + rows)
    weight = (rng.standard_normal((rows, 40)) * rng.choice([1e-3, 1.0], (rows, 40))).astype(np.float32)
    model = h.make_model(h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"], name="m")], "g",
                                      [h.make_tensor_value_info("x", TensorProto.FLOAT, ["b", rows])],
                                      [h.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 40])],
                                      [numpy_helper.from_array(weight, "w")]), opset_imports=[h.make_opsetid("", 17)])
    result = Quantize(mode="weight-only", bits=bits, block_size=32, accuracy_level=1, latency_guard=False,
                      min_fidelity=0.0)(ir.serde.deserialize_model(model), Context(providers=CPU)).model
    from mcomp import evaluate

    used = evaluate.session(ir.serde.serialize_model(result).SerializeToString(), CPU).run(
        None, {"x": np.eye(rows, dtype=np.float32)})[0]
    scales = next(v.const_value.numpy() for v in result.graph.initializers.values() if v.name.endswith("_scales"))
    counts = tensor_counts(result, nonzero=True)[0]
    assert counts.parameters == rows * 40 + scales.size
    assert counts.nonzero == np.count_nonzero(used) + np.count_nonzero(scales)
    assert np.count_nonzero(used) < rows * 40  # small weights do round to the zero point
