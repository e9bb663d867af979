"""The HTML report (``--report-html``): one self-contained page whose figures a browser really draws,
and the Markdown report's human formatting.

The browser test renders the page in headless Chromium to a PNG and compares it with the same page
with its figures taken out: the figures must add drawn pixels, and the page must log no console
error. It skips where no Chromium is installed; CI installs one with ``.ci/browser``.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from clirun import run_mcomp
from mcomp import report, report_html

ASSETS = Path(report.__file__).resolve().parent / "assets"
EVIL = "<script>alert(1)</script>&\"$x$"


def _doc() -> dict:
    """A report with every figure's source: latency with its A/A band, ops, a structured prune,
    quantize --explain with a float fallback, distill history; names that need escaping."""
    model = {"path": f"/models/{EVIL}.onnx", "sha256": "ab" * 32, "bytes": 168_369, "kind": "onnx",
             "parameters": 40_842, "nonzero_parameters": 40_842, "sparsity": 0.0, "parameter_bytes": 163_368,
             "macs": 616_064, "nodes": 22, "opset": 18, "ops": {"Conv": 3, "Relu": 4, "Gemm": 2}, "macs_unknown": None}
    out = dict(model, path="/tmp/out.onnx", bytes=44_730, parameters=10_348, nonzero_parameters=10_348,
               macs=156_480, nodes=12, ops={"Conv": 3, "Relu": 3, "Gemm": 2, "QuantizeLinear": 5})
    lat = {"p50_ms": 0.69, "p90_ms": 0.9, "runs": 30}
    prune = {"pass": "prune", "options": {"rate": 0.5, "protect_ends": True}, "seconds": 5.4, "modified": True,
             "summary": f"structured: 4 of 5 groups cut in {EVIL}", "notes": ["one group left whole"],
             "changes": {"groups": [{"id": i, "chain": f"node_conv{i}.out => {EVIL}", "channels_before": 16 * (i + 1),
                                     "channels_after": 8 * (i + 1), "reason": None if i else "feeds the output"}
                                    for i in range(4)]}}
    explain = [{"rank": i + 1, "node": f"node_{i}{EVIL if i == 0 else ''}", "op_type": "Conv", "sqnr_db": 30.0 + i,
                "status": "float (accuracy budget)" if i == 2 else "quantized"} for i in range(5)]
    explain.append({"rank": 6, "node": "node_exact", "op_type": "Relu", "sqnr_db": None, "status": "quantized"})
    quantize = {"pass": "quantize", "options": {"mode": "static", "explain": True}, "seconds": 34.3, "modified": True,
                "summary": "static QDQ: 14/15 nodes quantized", "notes": ["sent one node back to float"],
                "changes": {"explain": explain}}
    history = [{"epoch": 0, "lr": None, "val_loss": 15.9, "val_accuracy": 0.43}] + [
        {"epoch": e, "lr": 0.001, "loss": 8.0 / e, "accuracy": 0.9, "val_loss": 4.0 / e, "val_accuracy": 0.95}
        for e in range(1, 6)]
    distill = {"pass": "distill", "options": {"epochs": 5}, "seconds": 163.8, "modified": True,
               "summary": "5 epochs", "notes": [], "changes": {"history": history}}
    data = {"source": f"/data/{EVIL}.npz", "feeds": 9, "samples": 540, "labels": True, "synthetic": False, "notes": []}
    return {
        "schema": report.SCHEMA_ID, "created": "2026-01-01T00:00:00+00:00", "command": f"mcomp run {EVIL}.yaml",
        "input": model, "output": out, "steps": [prune, quantize, distill],
        "data": {"evaluation": data, "measured_on": data},
        "fidelity": {"summary": {"cosine": 0.981012, "max_abs_error": 6.08}, "outputs": {}},
        "accuracy": {"known": True, "reference": 0.9926, "candidate": 0.9907},
        "latency": {"ratio": 0.536, "reference": lat, "candidate": dict(lat, p50_ms=0.379),
                    "noise_floor": {"median": 1.0, "p10": 0.95, "p90": 1.07}},
        "environment": {"mcomp": "0.1.0", "onnxruntime": "1.32.0", "cpu": EVIL, "providers_used": ["CPUExecutionProvider"],
                        "threads": None},
        "gates": {"max_accuracy_drop": {"limit": 0.01, "value": 0.0018518518518518823, "passed": True}},
        "seconds": 206.059, "notes": ["prune: one group left whole", "measured on a busy machine"],
    }


def _external_refs(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)[^"'\s>]*""", page, re.I)


def test_page_is_self_contained_and_has_every_figure():
    page = report_html.to_html(_doc())
    assert page.startswith("<!DOCTYPE html>")
    assert _external_refs(page) == []
    assert "<script" not in page.lower().replace("&lt;script", "")  # no script: the evil name is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<link" not in page and "@import" not in page and "url(http" not in page
    plots = re.findall(r'data-plot="(\w+)"', page)
    assert plots == ["latency", "size", "ops", "prune", "explain", "history"]
    assert page.count("<svg") == 6
    assert page.count("<?xml") == 0 and "<!DOCTYPE svg" not in page  # inline SVG: no prolog pointing at w3.org
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "ids collide between figures"
    for text in ("A/A noise", "float (accuracy budget)", "∞ dB", "channels kept per group", "val_accuracy",
                 "one group left whole", "measured on a busy machine", "0.0019", "CPUExecutionProvider"):
        assert text in page, text


def test_page_is_well_formed_html():
    class Balance(HTMLParser):
        VOID = {"meta", "br", "img", "hr", "input", "link"}

        def __init__(self):
            super().__init__()
            self.stack = []

        def handle_starttag(self, tag, attrs):
            if tag not in self.VOID:
                self.stack.append(tag)

        def handle_startendtag(self, tag, attrs):
            pass

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
            self.stack.pop()

    parser = Balance()
    parser.feed(report_html.to_html(_doc()))
    assert parser.stack == []


def test_unstructured_prune_and_a_bare_report_still_render():
    doc = _doc()
    doc["steps"] = [{"pass": "prune", "options": {}, "seconds": 1.0, "modified": True, "summary": "sparsity 50%",
                     "notes": [], "changes": {"layers": [{"tensor": "w", "node": "conv", "op": "Conv", "params": 10,
                                                           "sparsity": 0.5}]}}]
    page = report_html.to_html(doc)
    assert "sparsity per layer" in page
    bare = copy.deepcopy(doc)
    bare.update(latency=None, steps=[], gates={}, notes=[], data={})
    for side in ("input", "output"):
        bare[side]["ops"] = {}
    page = report_html.to_html(bare)
    assert re.findall(r'data-plot="(\w+)"', page) == ["size"]


def test_markdown_has_notes_data_and_human_numbers():
    md = report.to_markdown(_doc())
    assert "0.0019" in md and "0.00185185" not in md
    assert "| max_accuracy_drop | 0.01 | 0.0019 | yes |" in md
    assert "True" not in md and "False" not in md
    assert "- sent one node back to float" in md  # a step's notes under its summary
    assert "- measured on a busy machine" in md
    assert md.count("one group left whole") == 1  # the report repeats a step's notes; shown once
    assert "## Data" in md and "| 540 |" in md
    assert report.human(0.0018518518518518823) == "0.0019"
    assert (report.human(True), report.human(None), report.human(1257), report.human(2.5e-6)) == ("yes", "—", "1,257", "2.5e-06")


def test_cli_writes_the_page_and_never_over_the_input(tmp_path):
    model = ASSETS / "digits_cnn.onnx"
    page = tmp_path / "r.html"
    args = ["optimize", model, "-o", tmp_path / "o.onnx", "--runs", "3", "-q"]
    done = run_mcomp(*args, "--report-html", page, cwd=tmp_path)
    assert done.returncode == 0, done.explain()
    html = page.read_text()
    assert html.count("<svg") >= 3 and _external_refs(html) == []
    before = model.read_bytes()
    refused = run_mcomp(*args, "--report-html", model, cwd=tmp_path)
    assert refused.returncode == 2 and "overwrite" in refused.stderr, refused.explain()
    assert model.read_bytes() == before


def test_pipeline_report_html_is_relative_to_the_file(tmp_path):
    from mcomp.pipeline_spec import load_text

    pipeline = load_text("model: m.onnx\nsteps:\n  - optimize: {}\nreport_html: out/r.html\n", "p.yaml", base_dir=tmp_path)
    assert pipeline.resolve(pipeline.report_html) == str(tmp_path / "out" / "r.html")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _render(browser: str, page: Path, png: Path) -> subprocess.CompletedProcess:
    argv = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={page.parent / 'profile'}", "--enable-logging=stderr", "--v=0",
            f"--screenshot={png}", "--window-size=1200,3000", page.as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def _inked(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as im:
        gray = im.convert("L")
        return sum(gray.histogram()[:240])  # pixels darker than near-white


@pytest.mark.browser
def test_chromium_draws_the_figures(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on PATH (chromium, chromium-browser, chromium-headless-shell, google-chrome); "
                    "run .ci/browser to install one")
    doc = _doc()
    doc["steps"] = doc["steps"][:1] + doc["steps"][2:]  # fewer per-layer bars: everything fits in 3000 px
    page = report_html.to_html(doc)
    bare = re.sub(r'<figure class="plot".*?</figure>', "", page, flags=re.S)
    assert bare.count("<svg") == 0
    shots = {}
    for name, html in (("full", page), ("bare", bare)):
        (tmp_path / f"{name}.html").write_text(html, encoding="utf-8")
        done = _render(browser, tmp_path / f"{name}.html", tmp_path / f"{name}.png")
        assert done.returncode == 0 and (tmp_path / f"{name}.png").is_file(), done.stderr[-2000:]
        console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
        assert console == [], console
        shots[name] = _inked(tmp_path / f"{name}.png")
    # five figures of a few hundred by a few hundred pixels each: tens of thousands of drawn pixels
    assert shots["full"] > shots["bare"] + 20_000, shots
    dom = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (tmp_path / "full.html").as_uri()],
                         capture_output=True, text=True, timeout=300)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 5 and "<script>alert" not in dom.stdout
