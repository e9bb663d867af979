"""What people read, polished (issue 10): the warnings with their next step at the top of the Markdown and
HTML reports; the Markdown report's steps, shapes and data; ``inspect``'s MACs as a number at named
shapes (no dict reprs); ``bench`` and ``compare`` timing one example at stated shapes and hinting at
--input-shape when a model fails at assumed ones; image folders sized from the model's metadata.

The CLI runs are subprocesses started together up front (``clirun.Batch``); nothing here reads a
clock or depends on how fast the machine is."""

from __future__ import annotations

import json
import re
import shutil
import sys
from html import escape
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from clirun import DIGITS, DIGITS_EVAL, Batch, Result, run_mcomp, selected_keys, uses
from mcomp import bench, data, report, report_html, shapes, summary
from mcomp.cli.cmd_inspect import macs_text
from mcomp.errors import BadInput
from mcomp.session import input_specs

DYNAMIC = ["batch", 3, "height", "width"]
HINT = "measured at assumed shapes images=1×3×224×224; set --input-shape images=1,3,H,W"


def conv_model(*, metadata: dict | None = None, reshape: bool = False) -> ir.Model:
    """images[batch,3,height,width] → Conv(3→4, 3×3, pad 1) → y; with ``reshape`` the output is flattened to
    a fixed [1, 256], so the model runs at 8×8 only (and fails at an assumed 224×224)."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    h = onnx.helper
    nodes = [h.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1], name="conv")]
    inits = [onnx.numpy_helper.from_array(w, "w")]
    if reshape:
        nodes.append(h.make_node("Reshape", ["c", "to"], ["y"], name="flat"))
        inits.append(onnx.numpy_helper.from_array(np.array([1, 256], np.int64), "to"))
    else:
        nodes.append(h.make_node("Relu", ["c"], ["y"], name="relu"))
    out = h.make_tensor_value_info("y", 1, [1, 256] if reshape else ["batch", 4, "height", "width"])
    graph = h.make_graph(nodes, "conv", [h.make_tensor_value_info("images", 1, DYNAMIC)], [out], inits)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    proto.ir_version = 8
    if metadata:
        h.set_model_props(proto, metadata)
    return ir.serde.deserialize_model(proto)


def _args(key: str, d: Path) -> list[str]:
    ir.save(conv_model(), d / "dyn.onnx")
    ir.save(conv_model(reshape=True), d / "fixed.onnx")
    return {
        "prune": ["prune", "digits.onnx", "--method", "structured", "--rate", "0.5", "--data", "digits_eval.npz",
                  "-o", "s.onnx", "--report-md", "s.md", "--report-html", "s.html"],
        "inspect-dyn": ["inspect", "dyn.onnx"],
        "bench": ["bench", "digits.onnx", "digits.onnx", "--data", "digits_eval.npz", "--runs", "3", "--warmup", "1"],
        "bench-json": ["bench", "digits.onnx", "--data", "digits_eval.npz", "--runs", "3", "--warmup", "1", "--json"],
        "compare": ["compare", "digits.onnx", "digits.onnx", "--data", "digits_eval.npz", "--runs", "3"],
        "compare-json": ["compare", "digits.onnx", "digits.onnx", "--data", "digits_eval.npz", "--runs", "3", "--json"],
        "bench-fails": ["bench", "fixed.onnx", "--runs", "3"],
        "compare-fails": ["compare", "fixed.onnx", "fixed.onnx", "--runs", "3"],
    }[key]


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    def prepare(key: str):
        d = tmp_path_factory.mktemp(key.replace("-", "_"))
        shutil.copy(DIGITS, d / "digits.onnx")
        shutil.copy(DIGITS_EVAL, d / "digits_eval.npz")
        argv = _args(key, d)
        return lambda: run_mcomp(*argv, cwd=d)

    batch = Batch(prepare, selected_keys(request, sys.modules[__name__]))
    yield batch
    batch.close()


def ok(res: Result) -> Result:
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.explain()
    return res


# 1. the warnings, near the top of the Markdown and HTML reports


@uses("prune")
def test_a_prune_that_loses_accuracy_warns_at_the_top_of_the_markdown_and_html(runs):
    res = ok(runs["prune"])
    md, page = (res.folder / "s.md").read_text(), (res.folder / "s.html").read_text()
    doc = json.loads((res.folder / "s.report.json").read_text())
    accuracy = next(w for w in doc["warnings"] if w["kind"] == "accuracy")
    assert accuracy["message"] in md and accuracy["advice"] in md
    assert md.index("> [!CAUTION]") < md.index("| metric |")  # above the table, as an alert block
    assert "**Next:** distill it against the input" in md
    box = re.search(r'<section class="warnings">(.*?)</section>', page, re.S)
    assert box and '<div class="warn severe" role="alert">' in box.group(1)
    assert page.index('class="warnings"') < page.index("<table>")
    assert escape(accuracy["message"]) in box.group(1)
    assert "<code>mcomp distill " in box.group(1) and ".warn.severe{" in page


def test_warnings_sharing_advice_show_it_once_and_a_clean_report_has_none():
    doc = {"warnings": [{"kind": "accuracy", "severity": "warning", "message": "a", "advice": "do x"},
                        {"kind": "fidelity", "severity": "warning", "message": "b", "advice": "do x"},
                        {"kind": "latency", "severity": "warning", "message": "c", "advice": "do `y`"}]}
    assert [([w["message"] for w in ws], advice) for ws, advice in report.warning_groups(doc)] == [
        (["a", "b"], "do x"), (["c"], "do `y`")]
    assert report.warning_groups({}) == [] and report_html.warnings_html({"warnings": []}) == ""
    assert "<code>y</code>" in report_html.warnings_html(doc) and "severe" not in report_html.warnings_html(doc)


# 2. the Markdown report: steps, notes, shapes with what was assumed, data, human formatting


def test_markdown_has_steps_notes_assumed_shapes_data_and_human_values(tmp_path):
    from mcomp import pipeline as pipeline_io
    from mcomp.pipeline_spec import load_text

    ir.save(conv_model(), tmp_path / "dyn.onnx")
    pipe = load_text(f"model: {tmp_path / 'dyn.onnx'}\ndata: {{evaluation: random}}\nmeasure: {{latency: false}}\n"
                     "steps:\n  - optimize: {level: basic}\n", "pipe.yaml")
    doc = pipeline_io.execute(pipe, pipeline_io.RunRequest(output=str(tmp_path / "o.onnx"))).report
    md = report.to_markdown(doc)
    step = doc["steps"][0]
    assert step["summary"] in md and all(f"- {n}" in md for n in step["notes"])
    assert "| measured at | images 1×3×224×224 |  | assumed: dims 0,2,3 — set --input-shape images=1,3,H,W |" in md
    assert "## Data" in md and "| evaluation | random | 8 | no | yes |" in md
    assert "- synthetic inputs (standard normal); accuracy unknown, fidelity on noise" in md  # the data's own note
    assert not re.search(r"\b(True|False|None)\b", md)
    assert not re.search(r"\d\.\d{7,}", md)  # no float printed to 17 digits


def test_data_notes_name_their_roles_unless_every_data_set_has_them():
    doc = {"data": {"calibration": {"notes": ["n1", "both"]}, "evaluation": {"notes": ["both"]}}}
    assert report.data_notes(doc) == ["calibration: n1", "both"]


# 3. inspect: MACs as a number at named shapes, with what was assumed; no dict reprs


@uses("inspect-dyn")
def test_inspect_says_the_shapes_macs_were_counted_at_and_prints_no_dict(runs):
    out = ok(runs["inspect-dyn"]).out
    assert "{" not in out and "}" not in out
    macs = 4 * 3 * 9 * 224 * 224
    assert (f"{macs:,} at images 1×3×224×224 (assumed: dims 0,2,3 — set --input-shape images=1,3,H,W)"
            in " ".join(out.split()))
    assert "images: float32 [batch, 3, height, width], dims 0,2,3 dynamic" in out


def test_macs_text_with_metadata_and_given_shapes():
    info = summary.describe(conv_model(metadata={"imgsz": "[16, 24]"}))
    assert macs_text(info) == f"{4 * 27 * 16 * 24:,} at images 1×3×16×24 (assumed: dim 0 — set --input-shape images=1,3,16,24)"
    given = summary.describe(conv_model(), input_shapes={"images": (2, 3, 8, 8)})
    assert macs_text(given) == f"{2 * 4 * 27 * 64:,} at images 2×3×8×8 (from --input-shape)"
    assert macs_text(given | {"macs_unknown_nodes": ["a", "b"]}).endswith("; 2 nodes of unknown shape not counted")
    none_counted = given | {"macs": 0, "macs_unknown_nodes": ["a", "b"], "macs_unknown_reason": "2 compute node(s) not "
                            "counted: symbolic shape inference failed"}  # not "0 at …": a model without compute
    assert macs_text(none_counted) == ("unknown at images 2×3×8×8 (from --input-shape): "
                                       "2 compute node(s) not counted: "
                                       "symbolic shape inference failed")


# 4. bench and compare: one example per run, at stated shapes; a failure at assumed shapes says how to set them


@uses("bench", "bench-json")
def test_bench_times_one_example_and_says_the_shapes(runs):
    doc = json.loads(ok(runs["bench-json"]).stdout)
    assert doc["input_shapes"] == {"image": [1, 1, 8, 8]} and doc["examples_per_run"] == 1  # not the file's 16
    assert doc["shapes"] == {"image": {"shape": [1, 1, 8, 8], "source": "data", "assumed_dims": []}}
    assert "latency per example, measured at image 1×1×8×8 (from data)" in ok(runs["bench"]).out


@uses("compare", "compare-json")
def test_compare_times_one_example_and_says_the_shapes(runs):
    doc = json.loads(ok(runs["compare-json"]).stdout)
    assert doc["latency"]["feed_shapes"] == {"image": [1, 1, 8, 8]} and doc["data"]["samples"] == 540
    assert doc["shapes"]["image"]["source"] == "data"
    out = ok(runs["compare"]).out
    assert "latency per example: p50 " in out and "measured at image 1×1×8×8 (from data)" in out


@uses("bench-fails", "compare-fails")
def test_bench_and_compare_failing_at_assumed_shapes_say_how_to_set_them(runs):
    for key in ("bench-fails", "compare-fails"):
        res = runs[key]
        assert res.returncode == 2 and "internal error" not in res.stderr, res.explain()
        assert HINT in res.stderr, res.explain()


def test_example_feeds_cut_the_batch_to_one_or_to_the_given_batch():
    specs = input_specs(conv_model())
    feeds = [{"images": np.zeros((16, 3, 8, 8), np.float32)}] * 6
    assert [f["images"].shape for f in bench.example_feeds(feeds, specs)] == [(1, 3, 8, 8)] * 4
    assert bench.example_feeds(feeds, specs, {"images": (4, 3, 8, 8)}, n=1)[0]["images"].shape == (4, 3, 8, 8)


def test_a_given_batch_larger_than_the_datas_is_joined_from_its_feeds_in_order():
    """Data is read in batches of 16: --input-shape images=40,… was timed at 16 (mcomp auto searched a
    compute-bound batch's latency at another batch). The examples are joined in order; where the data
    holds fewer, from its start again; as many whole feeds of the batch as the data fills, at least one."""
    specs = input_specs(conv_model())
    numbered = [{"images": np.repeat(np.arange(k * 16, (k + 1) * 16, dtype=np.float32), 3 * 8 * 8).reshape(16, 3, 8, 8)}
                for k in range(6)]  # 96 examples, each filled with its number 0…95
    joined = bench.example_feeds(numbered, specs, {"images": (40, 3, 8, 8)})
    assert [f["images"].shape for f in joined] == [(40, 3, 8, 8)] * 2  # 96 examples fill two feeds of 40
    assert [int(v) for v in joined[1]["images"][:, 0, 0, 0]] == list(range(40, 80))
    wrapped = bench.example_feeds(numbered[:1], specs, {"images": (40, 3, 8, 8)})
    assert len(wrapped) == 1
    assert [int(v) for v in wrapped[0]["images"][:, 0, 0, 0]] == [*range(16), *range(16), *range(8)]
    resolved = shapes.resolve(conv_model(), given={"images": (40, 3, 8, 8)}, feed=numbered[0])
    assert resolved["images"].shape == (40, 3, 8, 8)  # the shapes said are the ones run


def test_the_latency_row_and_the_guard_time_the_batch_given_beyond_the_datas(tmp_path):
    res = run_mcomp("quantize", str(DIGITS), "--data", str(DIGITS_EVAL), "--input-shape", "image=64,1,8,8",
                    "--guard-runs", "5", "--runs", "5", "-o", "q.onnx", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    doc = json.loads(res.out)
    assert doc["latency"]["feed_shapes"] == {"image": [64, 1, 8, 8]}
    assert doc["steps"][0]["changes"]["guard_feed_shapes"] == {"image": [64, 1, 8, 8]}


def test_the_hint_is_added_only_on_synthetic_data_at_assumed_shapes():
    resolved = shapes.resolve(conv_model())
    with pytest.raises(BadInput, match=re.escape(HINT)):
        with bench.hint_assumed_shapes(resolved, synthetic=True):
            raise BadInput("the model fails")
    for synthetic, at in ((False, resolved), (True, shapes.resolve(conv_model(), given={"images": (1, 3, 8, 8)}))):
        with pytest.raises(BadInput, match=r"^the model fails$"):
            with bench.hint_assumed_shapes(at, synthetic=synthetic):
                raise BadInput("the model fails")


# 5. image folders for a model whose height and width are dynamic


@pytest.fixture
def pngs(tmp_path) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        pixels = (np.random.default_rng(i).random((10, 12, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def test_an_image_folder_takes_the_size_from_the_models_metadata(pngs):
    loaded = data.load(str(pngs), conv_model(metadata={"imgsz": "[16, 24]"}))
    assert [f["images"].shape for f in loaded.feeds] == [(3, 3, 16, 24)]
    assert loaded.notes == ["images resized to 16×24 (the size in the model's metadata)"]


def test_an_image_folder_takes_the_size_from_input_shape_or_from_size(pngs):
    given = data.load(str(pngs), conv_model(), input_shapes={"images": (1, 3, 20, 20)})
    assert given.feeds[0]["images"].shape == (3, 3, 20, 20)
    assert given.notes == ["images resized to 20×20 (set by --input-shape)"]
    declared = data.load(data.ImageFolderSpec(images=pngs, size=(8, 8)), conv_model(metadata={"imgsz": "32"}))
    assert declared.feeds[0]["images"].shape == (3, 3, 8, 8) and declared.notes == []


def test_an_image_folder_without_a_known_size_names_the_option_in_one_line(pngs):
    with pytest.raises(BadInput) as caught:
        data.load(str(pngs), conv_model())
    message = str(caught.value)
    assert "\n" not in message and "the model's image size is dynamic and not in its metadata" in message
    assert "set it with --input-shape images=1,3,H,W (or 'size: [height, width]'" in message
