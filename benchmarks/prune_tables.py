"""The Markdown tables of ``benchmarks/prune.py`` (``markdown(results, runs)``)."""

from __future__ import annotations

import os


# --------------------------------------------------------------------------- Markdown

def _floor(f) -> str:
    return f"{f['p10']:.2f}–{f['p90']:.2f}"


def _best(a: float, b: float, higher: bool) -> tuple[str, str]:
    """Both figures, the better one in bold."""
    fa, fb = f"{a:.4f}", f"{b:.4f}"
    if a == b:
        return fa, fb
    return (f"**{fa}**", fb) if (a > b) == higher else (fa, f"**{fb}**")


_SCALE_RUNS = {"driver": "channel removal (`prune_structured`)", "pass": "the whole `Prune` pass (+ zip/zstd sizes)",
               "stages": "`prune_structured` step by step (below)"}


def _table(header: str, rows: list[dict], label, row) -> list[str]:
    """A Markdown table: ``header``, its rule, and a line per row (``row(r)``; a failed run says why)."""
    columns = header.count("|") - 1
    return [header, "|" + "---|" * columns,
            *(f"| {label(r)} | failed: {r['error']} |" + " |" * (columns - 2) if "error" in r else row(r) for r in rows)]


def _unstructured_row(r: dict) -> str:
    b, f = r["bytes"], r["fidelity"]
    lat = f"×{r['latency_ratio']:.3f} ({_floor(r['noise_floor'])})" if "latency_ratio" in r else "—"
    acc = f"{r['accuracy']:.3f} ({r['accuracy_input']:.3f})" if "accuracy" in r else "—"
    agree = f"{f['top1_agreement']:.3f}" if "top1_agreement" in f else "—"
    if f.get("char_agreement") is not None:
        agree += f" ({f['char_agreement']:.3f} of {f['char_positions']}/{f['positions']})"
    return (f"| {r['model']} | {r['method']} | {r['rate']:.0%} | {r['sparsity']:.2%} "
            f"| {b['before']['zip']:,} → {b['after']['zip']:,} (×{b['after']['zip'] / b['before']['zip']:.3f}) "
            f"| {b['before']['zstd']:,} → {b['after']['zstd']:,} (×{b['after']['zstd'] / b['before']['zstd']:.3f}) "
            f"| {lat} | {f['cosine']:.4f} | {agree} | {acc} |")


def _merge_row(r: dict) -> str:
    s, g = r["structured"], r["merge"]
    cos, rl2 = _best(s["cosine"], g["cosine"], True), _best(s["relative_l2"], g["relative_l2"], False)
    acc = "—"
    if "accuracy" in s:
        a1, a2 = _best(s["accuracy"], g["accuracy"], True)
        acc = f"{a1} / {a2} ({r['accuracy_input']:.4f})"
    return (f"| {r['model']} | {r['rate']} | {r['round_to']} | {cos[0]} / {cos[1]} | {rl2[0]} / {rl2[1]} "
            f"| {acc} | ×{s['parameters_ratio']:.3f} | {g['fell_back']} |")


def markdown(res: dict, runs: int) -> str:
    threads = res.get("threads") or "default"
    lines = [f"# mcomp prune ({runs} interleaved rounds, 4× for the ~1 ms models; CPU, {os.cpu_count()} cores, "
             f"onnxruntime threads {threads}, spinning off)", ""]
    if "structured" in res:
        lines += ["## 1. Structured: 50 % of the channels (importance l1, round_to 8)", "",
                  "Goal for ResNet-18: latency ≤ 0.35× the input. Seconds: the whole `Prune` pass, which also "
                  "computes the zip/zstd size of the model before and after; in brackets the channel removal "
                  "alone (`prune_structured`).", "",
                  *_table("| model | parameters in → out (×) | MACs × | latency ×input (A/A p10–p90) | rounds "
                          "| input p50 ms | groups cut | seconds pass (cut) |", res["structured"], lambda r: r["model"],
                          lambda r: f"| {r['model']} | {r['parameters'][0]:,} → {r['parameters'][1]:,} "
                                    f"(×{r['parameters_ratio']:.3f}) | ×{r['macs_ratio']:.3f} "
                                    f"| **×{r['latency_ratio']:.3f}** ({_floor(r['noise_floor'])}) | {r['rounds']} "
                                    f"| {r['input_p50_ms']:.2f} | {r['groups_cut']}/{r['groups']} "
                                    f"| {r['seconds']:.2f} ({r['cut_seconds']:.2f}) |"), ""]
    if "versus" in res:
        v = res["versus"]
        u, m, t = v["unpruned"], v["mcomp"], v["torch_pruning"]
        fid = v["fidelity_vs_unpruned"]
        lines += ["## 2. mcomp vs Torch-Pruning: " + v["model"], "",
                  "Torch-Pruning: `BasePruner(model, x, MagnitudeImportance(p=1), pruning_ratio=0.5, global_pruning=False, "
                  "ignored_layers=[fc], round_to=8)`, then exported like the input; mcomp prunes the input's ONNX. "
                  "Parameters and MACs are counted the same way on the ONNX files (`mcomp inspect`). "
                  "\"folded\": the file after mcomp's constant folding only (no channel removed), a control for the "
                  "zero biases that torch's `optimize=False` export computes at run time. All five interleaved in one run.", "",
                  f"| | parameters | MACs | latency ×unpruned (A/A p10–p90 {_floor(v['noise_floor'])}) | latency ×folded unpruned | seconds | output cosine vs unpruned |",
                  "|---|---|---|---|---|---|---|",
                  f"| unpruned | {u['parameters']:,} | {u['macs']:,} | ×1 ({u['p50_ms']:.2f} ms p50) | | | |",
                  f"| unpruned, folded | {u['parameters_folded']:,} | {u['macs']:,} | ×{u['folded_latency_ratio']:.3f} | ×1 | | 1 |",
                  f"| mcomp | {m['parameters']:,} (×{m['parameters'] / u['parameters']:.3f}) | {m['macs']:,} (×{m['macs'] / u['macs']:.3f}) "
                  f"| **×{m['latency_ratio']:.3f}** | ×{m['over_folded_input']:.3f} | {m['seconds']:.2f} ({m['cut_seconds']:.2f} cut) | {fid['mcomp']['cosine']:.3f} |",
                  f"| torch-pruning | {t['parameters']:,} (×{t['parameters'] / u['parameters']:.3f}) | {t['macs']:,} (×{t['macs'] / u['macs']:.3f}) "
                  f"| **×{t['latency_ratio']:.3f}** | | {t['seconds']:.2f} (+ export) | {fid['torch_pruning']['cosine']:.3f} |",
                  f"| torch-pruning, folded | {t['parameters_folded']:,} | {t['macs']:,} | ×{t['folded_latency_ratio']:.3f} "
                  f"| ×{t['over_folded_input']:.3f} | | |",
                  "", f"mcomp / Torch-Pruning: parameters ×{v['mcomp_over_tp']['parameters']:.4f} as exported "
                      f"(×{v['mcomp_over_tp']['parameters_both_folded']:.4f} with both folded), "
                      f"MACs ×{v['mcomp_over_tp']['macs']:.4f}. "
                  + ("Every conv keeps the same number of channels in both." if not v["width_differences"] else
                     "Conv widths that differ: " + ", ".join(f"conv {d['conv']}: {d['mcomp']} vs {d['torch_pruning']}"
                                                             for d in v["width_differences"])), "",
                  "What onnxruntime runs after its own optimizer (level all): "
                  + "; ".join(f"{k.replace('_', ' ')}: " + ", ".join(f"{n} {op}" for op, n in c.items())
                              for k, c in v["onnxruntime_ops"].items()), ""]
    if "unstructured" in res:
        lines += ["## 3. Unstructured: global sparsity (first and last layers protected)", "",
                  "Zeros shrink the compressed file, not the latency: onnxruntime's dense kernels multiply them "
                  "at full cost, so the latency ratio should read ×1.0 within the noise floor. Fidelity: digits on "
                  "its 540 evaluation images; ppocr-rec on 24 synthetic text lines, where most of the input's CTC "
                  "positions are blank, so the agreement on the positions where the input reads a character "
                  "(in brackets: of how many) is the telling figure, not the cosine of the softmax.", "",
                  *_table("| model | method | rate | sparsity | zip bytes in → out | zstd bytes in → out "
                          "| latency ×input (A/A p10–p90) | output cosine | top-1 agreement (characters) "
                          "| accuracy (input) |", res["unstructured"], lambda r: r["model"], _unstructured_row), ""]
    if "merge" in res:
        lines += ["## 4. Merge vs magnitude (structured l1): fidelity to the input", "",
                  "The same kept channel counts for both (same parameters). digits: the 540-image evaluation set; "
                  "ResNet-18: random weights (section 1's), on the PP-OCR det pages cropped to 224² — its filters "
                  "have no learned redundancy, so those rows only indicate. Better figure in bold.", "",
                  *_table("| model | rate | round_to | cosine l1 / merge | relative L2 l1 / merge "
                          "| accuracy l1 / merge (input) | params × | groups merge cut by L1 |", res["merge"],
                          lambda r: r["model"], _merge_row), ""]
    if "scale" in res:
        s = res["scale"]
        lines += [f"## 5. Scale: {s['model']}, {s['parameters']:,} parameters, {s['weight_mb']} MB of weights "
                  f"({s['file_mb']} MB file), structured 50 %", "",
                  "Each run in a fresh process; peak = VmHWM after resetting it (clear_refs 5) once the model is "
                  "loaded; size = the weights' bytes; growth = peak − RSS before loading (the interpreter and "
                  "libraries); transient = peak − RSS once loaded. Goal: seconds, and peak < 3× the model's size.", "",
                  *_table("| what is timed | seconds | load s | RSS before load → loaded MB | peak MB | peak / size "
                          "| growth / size | transient / size | parameters × |", s["runs"], lambda r: _SCALE_RUNS[r["mode"]],
                          lambda r: f"| {_SCALE_RUNS[r['mode']]} | **{r['seconds']:.1f}** | {r['load_seconds']:.1f} "
                                    f"| {r['rss_baseline_mb']:.0f} → {r['rss_loaded_mb']:.0f} | {r['peak_mb']:.0f} "
                                    f"| **{r['peak_over_size']:.2f}×** | {r['growth_over_size']:.2f}× "
                                    f"| {r['transient_over_size']:.2f}× | ×{r['parameters_ratio']:.3f} |")]
        staged = next((r for r in s["runs"] if r.get("stages")), None)
        if staged:
            lines += ["", "Step by step (peak over the RSS before the step, as a multiple of the weights' size): "
                      + "; ".join(f"{st['stage']} {st['seconds']:.2f} s, +{(st['peak_mb'] - st['rss_before_mb']) / s['weight_mb']:.2f}×"
                                  for st in staged["stages"])]
        lines.append("")
    return "\n".join(lines)
