"""Graph optimization (``mcomp optimize``): portable rewrites, then onnxruntime's offline optimizer;
at levels extended/all a transformer first gets onnxruntime's transformer fusions (``transformer.py``).

Stages run to a fixed point; each result is checked against the input's outputs and a
stage whose result differs beyond the tolerance is dropped, with the reason in the report.

```yaml
steps:
  - optimize: {level: basic, tolerance: 1.0e-4}
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from mcomp.errors import short
from mcomp.pass_base import Context, Pass, PassConfig, PassResult

if TYPE_CHECKING:  # the graph and runtime modules are imported where the pass runs (fast --help)
    import onnx_ir as ir

LEVELS = ("none", "basic", "extended", "all")


class Optimize(Pass):
    """Constant folding, BatchNorm folding, dead-node/identity elimination, fusions, and onnxruntime's offline optimizer."""

    name: ClassVar[str] = "optimize"
    summary: ClassVar[str] = "graph optimization: folding, fusion, dead-node removal; every stage checked numerically"
    needs: ClassVar[frozenset[str]] = frozenset({"data?"})
    in_place: ClassVar[bool] = False  # every stage runs on a copy; the input is returned when none is kept
    checks_fidelity: ClassVar[bool] = True

    class Config(PassConfig):
        level: Literal["none", "basic", "extended", "all"] = Field(
            "basic", description="onnxruntime offline level after the portable rewrites: none, basic (portable "
                                 "ONNX), extended/all (onnxruntime-specific fused ops for the target provider)")
        tolerance: float = Field(1e-4, gt=0, le=1, description="max |Δ| allowed per output, relative to max(1, max |reference|)")
        skip: list[str] = Field(default_factory=list, description="stage not to run: transformer, attention, fold-constants, "
                                                                  "fold-shapes, eliminate, fuse-batchnorm, fuse, onnxruntime")
        max_iterations: int = Field(3, ge=1, le=10, description="rounds of the portable stages, to a fixed point")
        check_feeds: int = Field(4, ge=1, le=1000, description="feeds of the data used for the numerical check")
        model_type: Literal["auto", "bert", "gpt2", "vit"] = Field(
            "auto", description="transformer family for onnxruntime's transformer fusions at level extended/all "
                                "(auto: read from the graph)")
        num_heads: int = Field(0, ge=0, le=4096, description="attention heads for the transformer fusions "
                                                              "(0: read from the head-split Reshape)")
        hidden_size: int = Field(0, ge=0, description="hidden size for the transformer fusions (0: read from the graph)")

    def stages(self):
        from mcomp.passes.optimize.stages import PORTABLE_STAGES

        return PORTABLE_STAGES

    def call(self, model: ir.Model, ctx: Context) -> PassResult:
        from mcomp import evaluate
        from mcomp.graph import node_count
        from mcomp.passes.optimize import portable, transformer
        from mcomp.passes.optimize.verify import OutputCheck

        cfg = self.config
        known = {s.name for s in self.stages()} | {"transformer", "attention", "onnxruntime"}
        unknown = set(cfg.skip) - known
        if unknown:
            from mcomp.errors import ConfigError

            raise ConfigError(f"optimize: unknown stage(s) in skip: {sorted(unknown)} (valid: {', '.join(sorted(known))})")
        fusions = cfg.level in ("extended", "all") and "transformer" not in cfg.skip
        arch = transformer.detect(model, cfg.model_type, cfg.num_heads, cfg.hidden_size) if fusions else None
        dataset = evaluate.measurement_data(ctx, model, ctx.input_shapes, ctx.seed, feeds=2)
        check = OutputCheck(model, dataset.head(cfg.check_feeds), ctx.providers, cfg.tolerance, ctx.threads,
                            ctx.fidelity)
        nodes_before = node_count(model)
        records: dict[str, dict] = {}
        current = model
        if arch is not None:  # first: onnxruntime's patterns are those of exported graphs, before mcomp's rewrites
            ctx.progress("optimize: transformer fusions", 0, 1)
            current = transformer.run_stage(self._try, arch, current, check, records,
                                            attention_fusions="attention" not in cfg.skip)
        stages = [s for s in self.stages() if s.name not in cfg.skip]
        for round_ in range(cfg.max_iterations):
            changed = False
            for k, stage in enumerate(stages):  # each stage ends in a numerical check: counted, for the ETA
                ctx.progress(f"optimize: portable stages, round {round_ + 1}", k, len(stages))
                current, kept = self._try(stage.name, stage.description, current, stage.apply, check, records)
                changed |= kept
            if not changed:
                break
        if cfg.level != "none" and "onnxruntime" not in cfg.skip:
            ctx.progress(f"optimize: onnxruntime {cfg.level}", 0, 1)
            current, _ = self._try("onnxruntime", f"onnxruntime offline optimizer, level {cfg.level}", current,
                                   lambda m: portable.onnxruntime_stage(m, cfg.level, ctx.providers),
                                   check, records, functional=True)
        notes = []
        if cfg.level in ("extended", "all"):
            notes.append(f"level {cfg.level!r} writes onnxruntime-specific ops for {ctx.providers[0]}; "
                         "the model then needs onnxruntime (use level basic for a portable model)")
        notes += [f"stage {r['name']} not kept: {r['reason']}" for r in records.values() if r["rejected"]]
        notes += transformer.notes(arch, records) + ([check.note] if check.note else [])
        nodes_after = node_count(current)
        kept = [r["name"] for r in records.values() if r["applied"]]
        rejected = [r["name"] for r in records.values() if r["rejected"] and not r["applied"]]
        summary = (f"nodes {nodes_before} → {nodes_after}; stages applied: {', '.join(kept) or 'none'}"
                   + (f"; rejected: {', '.join(rejected)}" if rejected else "") + f"; checked on {dataset.source}")
        details = {"nodes_before": nodes_before, "nodes_after": nodes_after, "level": cfg.level,
                   "checked_on": dataset.describe()["source"], "checked_feeds": len(check.dataset.feeds),
                   "tolerance": cfg.tolerance,
                   "stages": list(records.values())}
        return PassResult(current, current is not model, summary, notes, details)

    @staticmethod
    def _try(name, description, current, apply, check, records, functional=False):
        """Applies one stage to a copy; keeps it when the outputs still match.

        A third-party library (onnxscript's optimizer and rules, onnxruntime) failing on an odd graph
        rejects the stage and the run goes on; a failure in mcomp's own code (its rules, the stage
        plumbing) is a bug and propagates as an internal error (see ``raised_by_mcomp``)."""
        from mcomp.graph import copy, node_count

        record = records.setdefault(name, {"name": name, "description": description, "applied": 0,
                                           "rejected": 0, "nodes_removed": 0, "kept": True, "reason": None,
                                           "max_abs_error": 0.0})
        candidate = copy(current)
        before = node_count(candidate)
        try:
            if functional:
                candidate = apply(candidate)
                if candidate is None:  # nothing to change
                    return current, False
            elif not apply(candidate):
                return current, False
        except Exception as exc:  # noqa: BLE001 - re-raised unless a third-party library raised it
            from mcomp.passes.optimize.portable import StageRejected

            refused = isinstance(exc, StageRejected)  # a result mcomp refuses on purpose (not portable)
            if not refused and raised_by_mcomp(exc):
                raise
            record.update(rejected=record["rejected"] + 1, kept=record["applied"] > 0,
                          reason=str(exc) if refused else f"failed: {type(exc).__name__}: {short(exc, 160)}")
            return current, False
        verdict = check(candidate)
        if not verdict.ok:
            record.update(rejected=record["rejected"] + 1, kept=record["applied"] > 0, reason=verdict.reason)
            return current, False
        removed = before - node_count(candidate)
        record.update(applied=record["applied"] + 1, nodes_removed=record["nodes_removed"] + removed,
                      max_abs_error=max(record["max_abs_error"], verdict.max_abs_error))
        return candidate, True


def raised_by_mcomp(exc: BaseException) -> bool:
    """Whether ``exc`` comes from mcomp's own code rather than from a library mcomp called.

    Looks at the original error behind explicit re-raises (onnx-ir's PassManager raises a pass's
    error again as ``PassError(...) from error``). Past the mcomp frames it was raised through (the
    pass and the stage plumbing), it is mcomp's when it was raised right there, or when mcomp code
    runs again further in (one of mcomp's rewrite rules, called back by onnxscript's rewriter).
    """
    while exc.__cause__ is not None:
        exc = exc.__cause__
    modules = []
    tb = exc.__traceback__
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    own = [m == "mcomp" or m.startswith("mcomp.") for m in modules]
    first_foreign = next((i for i, o in enumerate(own) if not o), None)
    return first_foreign is None or any(own[first_foreign:])
