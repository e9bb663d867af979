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


class _Unchanged(Exception):
    """The input is returned as it is; the message says why."""


def run_quantize(cfg, model: ir.Model, ctx: Context) -> PassResult:
    started = time.perf_counter()
    flow = _Flow(cfg, model, ctx)
    with schemes.workdir() as tmp:
        try:
            result = flow.run(Path(tmp))
        except _Unchanged as why:
            flow.metrics.update(summary=f"{flow.metrics.get('scheme', 'quantize')}: input returned unchanged ({why})",
                                unchanged=str(why), notes=flow.notes)
            if flow.errors:
                flow.metrics["explain"] = [{**row, "status": "float (input returned)"}
                                           for row in _explain(flow.errors, set(), None, [], set())]
            return PassResult(model, False, flow.metrics)
    flow.metrics.update(notes=flow.notes, quantize_seconds=round(time.perf_counter() - started, 3))
    return PassResult(result, True, flow.metrics)


class _Flow:
    """One run: prepare → full candidate → accuracy budget → latency guard; each step may keep the input."""

    def __init__(self, cfg, model: ir.Model, ctx: Context):
        self.cfg, self.model, self.ctx = cfg, model, ctx
        self.notes: list[str] = []
        self.metrics: dict = {}
        self.target = detect(ctx.providers)
        self.calibration = _calibration_data(cfg, ctx, self.notes)
        self.evaluation = ctx.dataset("evaluation", "calibration") or data_io.synthetic(
            input_specs(model), input_shapes=ctx.input_shapes, feeds=4, seed=ctx.seed)
        if self.evaluation.synthetic and cfg.mode != "static":
            self.notes.append("no data: fidelity and the latency guard used synthetic inputs (standard normal)")
        self.reference = to_bytes(model)
        self.errors = []  # per-layer error rows, with --explain
        self._memo: dict[tuple, onnx.ModelProto] = {}

    def build(self, exclude, only=None) -> onnx.ModelProto:
        key = (frozenset(exclude), None if only is None else frozenset(only))
        if key not in self._memo:
            proto = self.scheme.build(*key)
            try:  # onnxruntime's converters can write graphs it then refuses (fp16 inside If branches)
                from mcomp.session import make_session

                make_session(proto.SerializeToString(), self.ctx.providers, optimization="disable")
            except BadInput as exc:
                self.notes.append(f"{self.scheme.label}: {exc}")
                raise _Unchanged("onnxruntime cannot load the quantized model") from None
            self._memo[key] = proto
        return self._memo[key]

    def run(self, workdir: Path) -> ir.Model:
        cfg, ctx = self.cfg, self.ctx
        self.prepared, per_channel = _prepare(cfg, self.model, self.notes)
        self.notes += self.prepared.notes
        if cfg.mode == "static":
            self._keep_wide_ranges_float()
        self.scheme = _scheme(cfg, self.prepared, workdir, self.calibration, self.target, per_channel)
        self.user = _user_exclusions(cfg.exclude, self.prepared.proto)
        self.metrics.update(_base_metrics(cfg, self.scheme, self.target, self.prepared, self.calibration,
                                          per_channel, self.user))
        self.live = [u for u in self.scheme.units if u.name not in self.user]
        if not self.live:
            self.notes.append("nothing to quantize: no node of the scheme's op types is left outside subgraphs, "
                              "recurrent ops and --exclude")
            raise _Unchanged("nothing to quantize")
        self.evaluator = bud.Evaluator(self.reference, bud.as_feeds(self.evaluation, EVAL_FEEDS), ctx.providers,
                                       ctx.threads, ctx.fidelity)
        ctx.progress("quantize: full candidate", 0, 1)
        excluded = set(self.user)
        score, fit, ranked = self.evaluator.score(self.build(excluded)), None, []
        self.errors = errors = self._layer_errors() if cfg.explain else []
        budget = self._budget()
        if not budget.holds(score, self.evaluator.reference_accuracy):
            fit, ranked = self._fit(budget, excluded)
            excluded |= set(fit.exclude)
            score = fit.score
        verdict = self._guard(excluded) if cfg.latency_guard else None
        if verdict is not None and verdict.exclude:
            excluded |= verdict.exclude
            score = self.evaluator.score(self.build(excluded))
        if cfg.explain:
            self.metrics["explain"] = _explain(errors, self.user, fit, ranked, verdict.exclude if verdict else set())
        result = ir.serde.deserialize_model(self.build(excluded))
        self.metrics.update(_outcome(self.model, result, self.scheme, excluded, self.user, self.prepared, score,
                                     self.evaluator, verdict))
        return result

    def _keep_wide_ranges_float(self) -> None:
        """Concats and outputs whose parts' ranges differ too much for one 8-bit scale stay float."""
        from mcomp.passes.quantize import shared_scale

        self.ctx.progress("quantize: shared-scale check", 0, 1)
        found = shared_scale.find(self.prepared.proto, self.calibration.feeds, self.ctx.providers, self.cfg.max_range_ratio)
        for wide in found:
            for name in wide.kept_float:
                self.prepared.float_only.setdefault(name, wide.reason())
            self.notes.append(f"kept float: {wide.op_type} {wide.node!r} ({wide.reason()}; --max-range-ratio "
                              f"{self.cfg.max_range_ratio:g})")
        self.metrics["shared_scale"] = [w.to_dict() for w in found]

    def _budget(self) -> bud.Budget:
        cfg = self.cfg
        if cfg.max_drop is not None and self.evaluator.reference_accuracy is None:
            raise BadInput("quantize: --max-drop needs labelled data with a classifier-shaped output "
                           "(use --min-fidelity without labels)")
        budget = bud.Budget(cfg.max_drop, cfg.min_fidelity, cfg.fidelity_metric, self.ctx.fidelity)
        if not budget.active:
            budget = bud.Budget.default(self.ctx.fidelity)
            self.notes.append(f"no --max-drop/--min-fidelity: kept {budget.describe()} against the input")
        self.metrics["budget"] = {"budget": budget.describe(), "held": True, "float_nodes": [], "trials": []}
        return budget

    def _layer_errors(self):
        from mcomp.passes.quantize.sensitivity import layer_errors

        self.ctx.progress("quantize: per-layer errors", 0, 1)
        return layer_errors(self.prepared.proto, self.build(self.user), self.live,
                            self.evaluation.head(SENSITIVITY_FEEDS).feeds, self.ctx.providers)

    def _fit(self, budget: bud.Budget, excluded: set[str]):
        """Ranks layer groups by damage and sends the worst back to float until ``budget`` holds."""
        from mcomp.passes.quantize.sensitivity import layer_groups, rank_groups

        ctx = self.ctx
        ctx.progress("quantize: per-layer sensitivity", 0, 1)
        quick = bud.Evaluator(self.reference, bud.as_feeds(self.evaluation, SENSITIVITY_FEEDS), ctx.providers,
                              ctx.threads, ctx.fidelity)
        ranked = rank_groups(layer_groups(self.prepared.proto, self.live), self.build, quick, excluded,
                             self.cfg.fidelity_metric)
        ctx.progress("quantize: accuracy budget", 0, 1)
        fit = bud.fit(self.build, self.evaluator, budget, [g.members for g in ranked], excluded,
                      damages=[g.damage for g in ranked])
        self.metrics["budget"] = {
            "budget": budget.describe(), "held": fit.holds, "float_nodes": fit.exclude, "trials": fit.trials,
            "sensitivity": [{"group": g.name, "nodes": len(g.members), "damage": round(g.damage, 6)} for g in ranked]}
        if not fit.holds or not {u.name for u in self.live} - excluded - set(fit.exclude):
            self.notes.append(f"the budget ({budget.describe()}) holds only with every layer in float")
            raise _Unchanged("budget met only in float")
        groups = min(t["float_groups"] for t in fit.trials if t["holds"])
        self.notes.append(f"{groups} most sensitive layer group(s) ({len(fit.exclude)} nodes) kept in float "
                          f"for {budget.describe()}")
        return fit, ranked

    def _guard(self, excluded: set[str]):
        """Measures candidates against the input; the input is kept when none is faster."""
        from mcomp.passes.quantize.guard import guard

        ctx, provider = self.ctx, self.target.provider
        ctx.progress("quantize: latency guard", 0, 1)
        verdict = guard(self.build, self.scheme.units, excluded, self.reference, self.evaluation.feeds[:GUARD_FEEDS],
                        ctx.providers, ctx.threads, self.cfg.guard_runs, try_groups=self.scheme.guard_groups)
        self.metrics["latency_guard"] = {"ratio": round(verdict.ratio, 4), "faster": verdict.faster,
                                         "noise_floor": verdict.noise_floor, "groups_reverted": verdict.groups_reverted,
                                         "trials": verdict.trials}
        if not verdict.faster:
            aa = (verdict.noise_floor or {}).get("median", 1.0)
            self.notes.append(f"no quantized variant was faster than the input on {provider} (best ×{verdict.ratio:.3f} "
                              f"of the input's latency, A/A ×{aa:.3f}); the input is returned unchanged "
                              "(--no-latency-guard writes the quantized model anyway)")
            raise _Unchanged(f"not faster (best ×{verdict.ratio:.3f})")
        if verdict.groups_reverted:
            self.notes.append(f"sent back to float because their quantization did not pay on {provider}: "
                              f"{', '.join(verdict.groups_reverted)} ({len(verdict.exclude)} nodes)")
        return verdict


def run_kmeans(cfg, model: ir.Model, ctx: Context) -> PassResult:
    """Shared weights per layer; the layers whose sharing costs the most go back to float until the budget holds."""
    from mcomp.kernels.compression import compressed_sizes
    from mcomp.passes.quantize import kmeans
    from mcomp.summary import tensor_counts

    bits, notes = cfg.bits or 4, []
    prep.lift_constants(model)
    total = tensor_counts(model)[0].parameters
    match = _exclusion_matcher(cfg.exclude)
    layers = kmeans.plan(model, bits, lambda node: match(node.name, node.op_type), seed=ctx.seed)
    if not layers:
        raise ConfigError("quantize: kmeans found no float weights (Conv, MatMul, Gemm, Gather, LSTM/GRU/RNN) to cluster")
    evaluation = ctx.dataset("evaluation", "calibration") or data_io.synthetic(
        input_specs(model), input_shapes=ctx.input_shapes, feeds=4, seed=ctx.seed)
    kmeans.apply(layers, set(range(len(layers))))
    reference = to_bytes(model)
    evaluator = bud.Evaluator(reference, bud.as_feeds(evaluation, EVAL_FEEDS), ctx.providers, ctx.threads, ctx.fidelity)
    budget = bud.Budget(cfg.max_drop, cfg.min_fidelity, cfg.fidelity_metric, ctx.fidelity)
    if not budget.active:
        budget = bud.Budget.default(ctx.fidelity)
        notes.append(f"no --max-drop/--min-fidelity: kept {budget.describe()} against the input")

    def build(keep_float, only=None):
        keep = set(range(len(layers))) - {int(i) for i in only} if only is not None else {int(i) for i in keep_float}
        kmeans.apply(layers, keep)
        return ir.serde.serialize_model(model)

    fit = bud.fit(build, evaluator, budget, [], set())
    if not fit.holds:  # rank the layers by the damage each does alone, then send the worst back to float
        from mcomp.passes.quantize.sensitivity import Group, merge, rank_groups

        quick = bud.Evaluator(reference, bud.as_feeds(evaluation, SENSITIVITY_FEEDS), ctx.providers, ctx.threads,
                              ctx.fidelity)
        groups = merge([Group(layer.info["node"], [str(i)]) for i, layer in enumerate(layers)], 24)
        ranked = rank_groups(groups, build, quick, set(), cfg.fidelity_metric)
        fit = bud.fit(build, evaluator, budget, [g.members for g in ranked], set(), damages=[g.damage for g in ranked])
    keep = {int(i) for i in fit.exclude}
    if not fit.holds or len(keep) == len(layers):
        kmeans.apply(layers, set(range(len(layers))))
        raise ConfigError(f"quantize: kmeans {bits}-bit meets {budget.describe()} only with every layer in float; "
                          "try more --bits, or a looser --min-fidelity")
    kmeans.apply(layers, keep)
    size = kmeans.sizes(layers, keep, total)
    if keep:
        notes.append(f"{len(keep)} layer(s) whose sharing cost the most kept in float for {budget.describe()}")
    notes += ["the written ONNX keeps float weights holding the centroids (it runs anywhere, at the input's speed); "
              "the deployable size counts each layer's codebook plus its Huffman-coded indices",
              "latency unchanged by construction: same graph, same ops"]
    fid = fit.score.to_dict(evaluator.reference_accuracy)
    summary = (f"kmeans {bits}-bit: {len(layers) - len(keep)}/{len(layers)} layers share 2^{bits} values each; "
               f"{_fidelity_text(fid)}; deployable {size['float32']:,} → {size['deployable_huffman']:,} bytes "
               f"(×{size['float32'] / size['deployable_huffman']:.1f} with Huffman-coded indices, "
               f"×{size['float32'] / size['deployable_fixed_width']:.1f} fixed-width)")
    size["onnx_zstd"] = compressed_sizes([to_bytes(model)]).get("zstd")
    return PassResult(model, True, {
        "summary": summary, "mode": "kmeans", "bits": bits, "bytes": size, "fidelity": fid,
        "layers": [dict(layer.info, shared=i not in keep) for i, layer in enumerate(layers)],
        "budget": {"budget": budget.describe(), "held": fit.holds, "trials": fit.trials}, "notes": notes})


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
    keep = cfg.mode in ("dynamic", "weight-only")
    try:
        prepared = prep.prepare(model, opset=opset, keep_matmul=keep)
    except ValueError as exc:
        if not per_channel:
            raise BadInput(f"quantize: {exc}") from None
        notes.append(f"per-channel needs opset 13 and {exc}; quantized per-tensor instead")
        prepared, per_channel = prep.prepare(model, opset=10 if cfg.mode == "static" else None, keep_matmul=keep), False
    if cfg.mode == "weight-only":
        _gather_opset(prepared, notes)
    if cfg.mode == "dynamic":  # onnxruntime has DynamicQuantizeLSTM
        lstm = {n.name for n in prepared.proto.graph.node if n.op_type == "LSTM"}
        prepared.float_only = {k: v for k, v in prepared.float_only.items() if k not in lstm}
    return prepared, per_channel


def _gather_opset(prepared, notes: list[str]) -> None:
    """Block-quantized Gather needs opset 21; onnxruntime's quantizer only relabels the opset (leaving ops
    whose signature changed since, such as ReduceMean's axes, invalid), so the graph is converted here —
    or Gather is left in float."""
    if not schemes.gather_tables(prepared.proto) or (prepared.opset or 0) >= 21:
        return
    try:
        prepared.proto = prep.upgrade_opset(prepared.proto, 21)
        notes.append(f"opset upgraded {prepared.opset} → 21 (block-quantized Gather needs int4 tensors)")
        prepared.opset = 21
    except ValueError as exc:
        for name in schemes.gather_tables(prepared.proto):
            prepared.float_only[name] = f"Gather: block quantization needs opset 21 and {exc}"


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


def _user_exclusions(entries: list[str], proto: onnx.ModelProto) -> set[str]:
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


def _explain(errors, user, fit, ranked, guard_float) -> list[dict]:
    """Per-layer rows ranked by the noise each adds; with the damage of the layer's group where measured."""
    budget_float = set(fit.exclude) if fit else set()
    damage = {m: g.damage for g in ranked for m in g.members}
    rows = []
    for rank, e in enumerate(errors, 1):
        status = ("float (--exclude)" if e.name in user else "float (accuracy budget)" if e.name in budget_float
                  else "float (latency)" if e.name in guard_float else "quantized")
        rows.append({"rank": rank, **e.row(), "group_damage": None if e.name not in damage else round(damage[e.name], 6),
                     "status": status})
    return rows


def _outcome(model, result, scheme, excluded, user, prepared, score, evaluator, verdict) -> dict:
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
               f"{_fidelity_text(fid)}" + (f", accuracy drop {fid['accuracy_drop']:+.4f}" if "accuracy_drop" in fid else "")
               + f"; tensors {before:,} → {after:,} bytes (×{after / max(before, 1):.2f})")
    return {"summary": summary, "quantized_nodes": len(quantized), "quantized_ops": ops,
            "exclusions": sorted(excluded - set(prepared.float_only)), "float_nodes_from_search": fell_back,
            "fidelity": fid, "weight_bytes": {"before": before, "after": after},
            "quantized_weight_bytes": _layer_weight_bytes(prepared.proto, ir.serde.serialize_model(result), quantized),
            "candidates_built": scheme.builds}


def _layer_weight_bytes(prepared: onnx.ModelProto, result: onnx.ModelProto, quantized) -> dict:
    """Weight tensors of the quantized compute layers: float bytes before, and after the bytes of what replaced
    them (``W_quantized``, ``W_scale``, ``W_zero_point``; ``W_Q4``, ``W_scales`` …)."""
    from onnx import numpy_helper

    nodes = {n.name: n for n in prepared.graph.node}
    inits = {t.name: t for t in prepared.graph.initializer}
    weights = set()
    for u in (u for u in quantized if u.compute or u.op_type == "Gather"):
        node = nodes.get(u.name)
        index = 0 if u.op_type == "Gather" else 1
        if node is not None and len(node.input) > index and node.input[index] in inits:
            weights.add(node.input[index])
    before = sum(numpy_helper.to_array(inits[w]).nbytes for w in weights)
    after = sum(numpy_helper.to_array(t).nbytes for t in result.graph.initializer
                if t.name not in inits and any(t.name.startswith(w + "_") for w in weights))
    return {"layers": len(weights), "before": before, "after": after,
            "ratio": round(before / after, 3) if after else None}


def _fidelity_text(fid: dict) -> str:
    """``cosine 0.999 (worst slice: output0[1][12] 0.93)`` for the summary line."""
    text = f"cosine {fid['cosine']}"
    worst = fid.get("worst_slice")
    if worst:
        text += f" (worst slice {worst['output']}[axis {worst['axis']}][{worst['index']}] cosine {worst['cosine']})"
    return text
