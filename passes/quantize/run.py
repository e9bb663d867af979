"""The quantize pass's flow: prepare → build the full candidate → accuracy budget → latency guard → result."""

from __future__ import annotations

import fnmatch
import json
import time
from pathlib import Path

import onnx
import onnx_ir as ir

from mcomp import data as data_io
from mcomp.errors import BadInput, ConfigError
from mcomp.model import to_bytes
from mcomp.pass_base import Context, PassResult
from mcomp.passes.quantize import MIN_CALIBRATION_SAMPLES
from mcomp.passes.quantize import budget as bud
from mcomp.passes.quantize import prepare as prep
from mcomp.passes.quantize import schemes
from mcomp.passes.quantize.target import detect
from mcomp.session import input_specs

EVAL_FEEDS = 32
GUARD_FEEDS = 4
SENSITIVITY_FEEDS = 2


def run_quantize(cfg, model: ir.Model, ctx: Context) -> PassResult:
    started = time.perf_counter()
    target = detect(ctx.providers)
    notes: list[str] = []
    calibration = _calibration_data(cfg, ctx, notes)
    evaluation = ctx.dataset("evaluation", "calibration") or data_io.synthetic(
        input_specs(model), input_shapes=ctx.input_shapes, feeds=4, seed=ctx.seed)
    if evaluation.synthetic and cfg.mode != "static":
        notes.append("no data: fidelity and the latency guard used synthetic inputs (standard normal)")
    prepared, per_channel = _prepare(cfg, model, notes)
    notes += prepared.notes
    reference = to_bytes(model)
    with schemes.workdir() as tmp:
        scheme = _scheme(cfg, prepared, Path(tmp), calibration, target, per_channel)
        memo: dict[frozenset, onnx.ModelProto] = {}

        def build(exclude) -> onnx.ModelProto:
            key = frozenset(exclude)
            if key not in memo:
                memo[key] = scheme.build(key)
            return memo[key]

        user = _user_exclusions(cfg.exclude, scheme.units, prepared.proto)
        metrics = _base_metrics(cfg, scheme, target, prepared, calibration, per_channel, user)
        live = [u for u in scheme.units if u.name not in user]
        if not live:
            notes.append("nothing to quantize: no node of the scheme's op types is left outside subgraphs, "
                         "recurrent ops and --exclude; the input is returned unchanged")
            return _unchanged(model, metrics, notes, "nothing to quantize")
        evaluator = bud.Evaluator(reference, bud.as_feeds(evaluation, EVAL_FEEDS), ctx.providers, ctx.threads)
        budget = bud.Budget(cfg.max_drop, cfg.min_fidelity, cfg.fidelity_metric)
        if not budget.active:
            budget = bud.Budget(min_fidelity=bud.DEFAULT_FLOOR)
            notes.append(f"no --max-drop/--min-fidelity: kept cosine ≥ {bud.DEFAULT_FLOOR} against the input")
        if cfg.max_drop is not None and evaluator.reference_accuracy is None:
            raise BadInput("quantize: --max-drop needs labelled data with a classifier-shaped output "
                           "(use --min-fidelity without labels)")
        ctx.progress("quantize: full candidate", 0, 1)
        full = build(user)
        excluded = set(user)
        errors = []
        score = evaluator.score(full)
        holds = budget.holds(score, evaluator.reference_accuracy)
        if cfg.explain or not holds:
            ctx.progress("quantize: per-layer sensitivity", 0, 1)
            from mcomp.passes.quantize.sensitivity import layer_errors

            errors = layer_errors(prepared.proto, full, live, evaluation.head(SENSITIVITY_FEEDS).feeds, ctx.providers)
        fit = None
        if not holds:
            ctx.progress("quantize: accuracy budget", 0, 1)
            ranked = [e.name for e in errors] + [u.name for u in live if u.name not in {e.name for e in errors}]
            fit = bud.fit(build, evaluator, budget, ranked, excluded)
            excluded |= set(fit.exclude)
            score = fit.score
            metrics["budget"] = {"budget": budget.describe(), "held": fit.holds, "float_layers": fit.exclude,
                                 "trials": fit.trials}
            if not fit.holds:
                notes.append(f"the budget ({budget.describe()}) does not hold even with every layer in float; "
                             "the input is returned unchanged")
                return _unchanged(model, metrics, notes, "budget not met")
            notes.append(f"{len(fit.exclude)} most sensitive layer(s) kept in float for {budget.describe()}")
        else:
            metrics["budget"] = {"budget": budget.describe(), "held": True, "float_layers": [], "trials": []}
        if cfg.explain:
            metrics["explain"] = _explain(errors, excluded, user, fit)
        verdict = None
        if cfg.latency_guard:
            ctx.progress("quantize: latency guard", 0, 1)
            from mcomp.passes.quantize.guard import guard

            feeds = evaluation.feeds[:GUARD_FEEDS]
            verdict = guard(build, scheme.units, excluded, reference, feeds, ctx.providers, ctx.threads, cfg.guard_runs)
            metrics["latency_guard"] = {"ratio": round(verdict.ratio, 4), "faster": verdict.faster,
                                        "noise_floor": verdict.noise_floor, "groups_reverted": verdict.groups_reverted,
                                        "trials": verdict.trials}
            if not verdict.faster:
                notes.append(f"no quantized variant was faster than the input on {target.provider} (best ×"
                             f"{verdict.ratio:.3f} of the input's latency, A/A ×{(verdict.noise_floor or {}).get('median', 1):.3f}); "
                             "the input is returned unchanged (--no-latency-guard writes it anyway)")
                return _unchanged(model, metrics, notes, f"not faster (best ×{verdict.ratio:.3f})")
            if verdict.groups_reverted:
                notes.append("sent back to float because their quantization did not pay on "
                             f"{target.provider}: {', '.join(verdict.groups_reverted)} ({len(verdict.exclude)} nodes)")
            excluded |= verdict.exclude
            score = evaluator.score(build(excluded)) if verdict.exclude else score
        result = ir.serde.deserialize_model(build(excluded))
    metrics.update(_outcome(cfg, model, result, scheme, excluded, user, prepared, score, evaluator, verdict))
    metrics["notes"] = notes
    metrics["quantize_seconds"] = round(time.perf_counter() - started, 3)
    return PassResult(result, True, metrics)


def run_kmeans(cfg, model: ir.Model, ctx: Context) -> PassResult:
    from mcomp.kernels.compression import compressed_sizes
    from mcomp.passes.quantize.kmeans import cluster
    from mcomp.summary import tensor_counts

    bits = cfg.bits or 4
    work = model
    prep.lift_constants(work)
    before = tensor_counts(work)[0]
    names = _exclusion_matcher(cfg.exclude)
    report = cluster(work, bits, lambda node: names(node.name, node.op_type), seed=ctx.seed)
    if not report["layers"]:
        raise ConfigError("quantize: kmeans found no float weights of Conv/MatMul/Gemm/Gather to cluster")
    other = before.parameters - report["clustered_params"]
    deployable = report["codebook_bytes"] + report["index_bytes_huffman"] + 4 * other
    fixed = report["codebook_bytes"] + report["index_bytes_fixed"] + 4 * other
    original = 4 * before.parameters
    sizes = compressed_sizes(to_bytes(work))
    summary = (f"kmeans {bits}-bit: {len(report['layers'])} layers share 2^{bits} values each; deployable "
               f"{original:,} → {deployable:,} bytes (×{original / deployable:.1f} with Huffman-coded indices, "
               f"×{original / fixed:.1f} fixed-width)")
    notes = ["the written ONNX keeps float weights holding the centroids (it runs anywhere, at the input's speed); "
             "the deployable size counts each layer's codebook plus its Huffman-coded indices",
             "latency unchanged by construction: same graph, same ops"]
    metrics = {"summary": summary, "mode": "kmeans", "bits": bits, **report,
               "other_params": other, "bytes": {"float32": original, "deployable_huffman": deployable,
                                                "deployable_fixed_width": fixed, "onnx_zstd": sizes.get("zstd")},
               "notes": notes}
    return PassResult(work, True, metrics)


def _calibration_data(cfg, ctx: Context, notes: list[str]):
    if cfg.mode != "static":
        return None
    dataset = ctx.dataset("calibration", "evaluation")
    if dataset is None:
        raise BadInput("quantize: static mode needs calibration data: --data PATH (.npz or an image folder), "
                       "or --data random (accuracy unknown); --mode dynamic or weight-only needs none")
    if dataset.samples < MIN_CALIBRATION_SAMPLES:
        raise BadInput(f"quantize: {dataset.samples} calibration example(s) in {dataset.source} are too few to "
                       f"calibrate activation ranges; give at least {MIN_CALIBRATION_SAMPLES} (a few hundred is typical)")
    if dataset.synthetic:
        notes.append("WARNING: calibrated on random data: activation ranges come from noise, not real inputs; "
                     "accuracy is unknown and may be poor")
    return bud.as_feeds(dataset, cfg.calibration_feeds)


def _prepare(cfg, model: ir.Model, notes: list[str]):
    """The prepared graph; per-channel falls back to per-tensor when the opset cannot be upgraded."""
    per_channel = cfg.per_channel and cfg.mode in ("static", "dynamic")
    opset = 13 if per_channel else (10 if cfg.mode == "static" else None)
    try:
        return prep.prepare(model, opset=opset), per_channel
    except ValueError as exc:
        if not per_channel:
            raise BadInput(f"quantize: {exc}") from None
        notes.append(f"per-channel needs opset 13 and {exc}; quantized per-tensor instead")
        return prep.prepare(model, opset=10 if cfg.mode == "static" else None), False


def _scheme(cfg, prepared, workdir: Path, calibration, target, per_channel):
    if cfg.mode == "static":
        activations = target.activations if cfg.activations == "auto" else cfg.activations
        return schemes.Static(prepared, workdir, feeds=calibration.feeds, activations=activations,
                              per_channel=per_channel, symmetric=cfg.symmetric, reduce_range=target.reduce_range,
                              calibration=cfg.calibration, percentile=cfg.percentile)
    if cfg.mode == "dynamic":
        return schemes.Dynamic(prepared, workdir, per_channel=per_channel, reduce_range=target.reduce_range)
    if cfg.mode == "weight-only":
        return schemes.WeightOnly(prepared, workdir, bits=cfg.bits or 4, block_size=cfg.block_size)
    return schemes.Float16(prepared, workdir, keep_io_types=cfg.keep_io_types)


def _exclusion_matcher(entries: list[str]):
    """``(name, op_type) -> bool`` for node names/globs, op types, and exclusions read from a report."""
    patterns: list[str] = []
    for entry in entries:
        if entry.endswith(".json"):
            patterns += _report_exclusions(Path(entry))
        else:
            patterns.append(entry)
    names = [p for p in patterns if p]

    def match(name: str, op_type: str) -> bool:
        return any(p == op_type or p == name or fnmatch.fnmatchcase(name, p) for p in names)

    return match


def _report_exclusions(path: Path) -> list[str]:
    """The ``exclusions`` of every quantize step of a previous report (or a JSON list of names)."""
    if not path.is_file():
        raise BadInput(f"quantize: --exclude {path}: no such report file")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"quantize: --exclude {path}: not JSON ({exc})") from None
    if isinstance(doc, list):
        return [str(x) for x in doc]
    found = [name for step in doc.get("steps", []) if step.get("pass") == "quantize"
             for name in step.get("changes", {}).get("exclusions", [])]
    if not found and not any(step.get("pass") == "quantize" for step in doc.get("steps", [])):
        raise BadInput(f"quantize: --exclude {path}: the report has no quantize step")
    return found


def _user_exclusions(entries: list[str], units, proto: onnx.ModelProto) -> set[str]:
    if not entries:
        return set()
    match = _exclusion_matcher(entries)
    return {n.name for n in proto.graph.node if match(n.name, n.op_type)}


def _base_metrics(cfg, scheme, target, prepared, calibration, per_channel, user) -> dict:
    out = {"mode": cfg.mode, "scheme": scheme.label, "target": target.describe(),
           "opset": {"input": prepared.opset_before, "output": prepared.opset},
           "shape_inference": prepared.shape_inference, "per_channel": per_channel,
           "candidate_layers": len(scheme.units),
           "float_reasons": [{"node": n, "reason": r} for n, r in prepared.float_only.items()]
                            + [{"node": n, "reason": "--exclude"} for n in sorted(user)]}
    if calibration is not None:
        out["calibration"] = {**calibration.describe(), "method": cfg.calibration,
                              **({"percentile": cfg.percentile} if cfg.calibration == "percentile" else {})}
    return out


def _explain(errors, excluded, user, fit) -> list[dict]:
    budget_float = set(fit.exclude) if fit else set()
    rows = []
    for rank, e in enumerate(errors, 1):
        status = ("float (--exclude)" if e.name in user else "float (accuracy budget)" if e.name in budget_float
                  else "quantized")
        rows.append({"rank": rank, **e.row(), "status": status})
    return rows


def _outcome(cfg, model, result, scheme, excluded, user, prepared, score, evaluator, verdict) -> dict:
    from mcomp.summary import tensor_counts

    before, after = tensor_counts(model)[0].bytes, tensor_counts(result)[0].bytes
    live = scheme.units
    quantized = [u for u in live if u.name not in excluded]
    fell_back = sorted(u.name for u in live if u.name in excluded and u.name not in user)
    ops = {}
    for u in quantized:
        ops[u.op_type] = ops.get(u.op_type, 0) + 1
    fid = score.to_dict(evaluator.reference_accuracy)
    latency = f"latency ×{verdict.ratio:.2f} of the input, " if verdict else ""
    summary = (f"{scheme.label}: {len(quantized)}/{len(live)} nodes quantized; {latency}"
               f"cosine {fid['cosine']}" + (f", accuracy drop {fid['accuracy_drop']:+.4f}" if "accuracy_drop" in fid else "")
               + f"; weights {before:,} → {after:,} bytes (×{before / max(after, 1):.2f} smaller)")
    return {"summary": summary, "quantized_nodes": len(quantized), "quantized_ops": ops,
            "exclusions": sorted(excluded - set(prepared.float_only)), "float_nodes_from_search": fell_back,
            "fidelity": fid, "weight_bytes": {"before": before, "after": after},
            "candidates_built": scheme.builds}


def _unchanged(model, metrics, notes, why) -> PassResult:
    metrics["summary"] = f"{metrics.get('scheme', 'quantize')}: input returned unchanged ({why})"
    metrics["notes"] = notes
    metrics["unchanged"] = why
    return PassResult(model, False, metrics)
