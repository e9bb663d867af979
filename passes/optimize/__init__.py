"""Graph optimization (``mcomp optimize``): portable rewrites, then onnxruntime's offline optimizer.

Stages run to a fixed point; each result is checked against the input's outputs and a
stage whose result differs beyond the tolerance is dropped, with the reason in the report.

```yaml
steps:
  - optimize: {level: basic, tolerance: 1.0e-4}
```
"""

from __future__ import annotations

from typing import ClassVar, Literal

import onnx_ir as ir
from pydantic import Field

from mcomp import data as data_io
from mcomp.errors import one_line
from mcomp.model import copy
from mcomp.pass_base import Context, Pass, PassConfig, PassResult
from mcomp.session import input_specs
from mcomp.summary import node_count

LEVELS = ("none", "basic", "extended", "all")


class Optimize(Pass):
    """Constant folding, BatchNorm folding, dead-node/identity elimination, fusions, and onnxruntime's offline optimizer."""

    name: ClassVar[str] = "optimize"
    summary: ClassVar[str] = "graph optimization: folding, fusion, dead-node removal; every stage checked numerically"
    needs: ClassVar[frozenset[str]] = frozenset({"data?"})

    class Config(PassConfig):
        level: Literal["none", "basic", "extended", "all"] = Field(
            "basic", description="onnxruntime offline level after the portable rewrites: none, basic (portable "
                                 "ONNX), extended/all (onnxruntime-specific fused ops for the target provider)")
        tolerance: float = Field(1e-4, gt=0, le=1, description="max |Δ| allowed per output, relative to max(1, max |reference|)")
        skip: list[str] = Field(default_factory=list, description="stage names not to run")
        max_iterations: int = Field(3, ge=1, le=10, description="rounds of the portable stages, to a fixed point")
        check_feeds: int = Field(4, ge=1, le=1000, description="feeds of the data used for the numerical check")

    def stages(self):
        from mcomp.passes.optimize.stages import PORTABLE_STAGES

        return PORTABLE_STAGES

    def call(self, model: ir.Model, ctx: Context) -> PassResult:
        from mcomp.passes.optimize.ort_offline import optimize_offline
        from mcomp.passes.optimize.verify import OutputCheck

        cfg = self.config
        known = {s.name for s in self.stages()} | {"onnxruntime"}
        unknown = set(cfg.skip) - known
        if unknown:
            from mcomp.errors import ConfigError

            raise ConfigError(f"optimize: unknown stage(s) in skip: {sorted(unknown)} (valid: {', '.join(sorted(known))})")
        dataset = ctx.dataset("evaluation", "calibration") or data_io.synthetic(
            input_specs(model), input_shapes=ctx.input_shapes, feeds=2, seed=ctx.seed)
        check = OutputCheck(model, dataset.head(cfg.check_feeds), ctx.providers, cfg.tolerance, ctx.threads,
                            ctx.fidelity)
        nodes_before = node_count(model)
        records: dict[str, dict] = {}
        current = model
        stages = [s for s in self.stages() if s.name not in cfg.skip]
        for _ in range(cfg.max_iterations):
            changed = False
            for stage in stages:
                ctx.progress(f"optimize: {stage.name}", 0, 1)
                current, kept = self._try(stage.name, stage.description, current, stage.apply, check, records)
                changed |= kept
            if not changed:
                break
        if cfg.level != "none" and "onnxruntime" not in cfg.skip:
            ctx.progress(f"optimize: onnxruntime {cfg.level}", 0, 1)
            current, _ = self._try("onnxruntime", f"onnxruntime offline optimizer, level {cfg.level}", current,
                                   lambda m: optimize_offline(m, cfg.level, ctx.providers), check, records,
                                   functional=True)
        notes = []
        if cfg.level in ("extended", "all"):
            notes.append(f"level {cfg.level!r} writes onnxruntime-specific ops for {ctx.providers[0]}; "
                         "the model then needs onnxruntime (use level basic for a portable model)")
        notes += [f"stage {r['name']} not kept: {r['reason']}" for r in records.values() if r["rejected"]]
        nodes_after = node_count(current)
        kept = [r["name"] for r in records.values() if r["applied"]]
        rejected = [r["name"] for r in records.values() if r["rejected"] and not r["applied"]]
        summary = (f"nodes {nodes_before} → {nodes_after}; stages applied: {', '.join(kept) or 'none'}"
                   + (f"; rejected: {', '.join(rejected)}" if rejected else "") + f"; checked on {dataset.source}")
        metrics = {"summary": summary, "nodes_before": nodes_before, "nodes_after": nodes_after, "level": cfg.level,
                   "checked_on": dataset.describe()["source"], "tolerance": cfg.tolerance,
                   "stages": list(records.values()), "notes": notes}
        return PassResult(current, current is not model, metrics)

    @staticmethod
    def _try(name, description, current, apply, check, records, functional=False):
        """Applies one stage to a copy; keeps it when the outputs still match."""
        record = records.setdefault(name, {"name": name, "description": description, "applied": 0,
                                           "rejected": 0, "nodes_removed": 0, "kept": True, "reason": None,
                                           "max_abs_error": 0.0})
        candidate = copy(current)
        before = node_count(candidate)
        try:
            if functional:
                candidate = apply(candidate)
            elif not apply(candidate):
                return current, False
        except Exception as exc:  # a rewrite library failing on an odd graph must not end the run
            record.update(rejected=record["rejected"] + 1, kept=record["applied"] > 0,
                          reason=f"failed: {type(exc).__name__}: {one_line(exc, 160)}")
            return current, False
        verdict = check(candidate)
        if not verdict.ok:
            record.update(rejected=record["rejected"] + 1, kept=record["applied"] > 0, reason=verdict.reason)
            return current, False
        removed = before - node_count(candidate)
        record.update(applied=record["applied"] + 1, nodes_removed=record["nodes_removed"] + removed,
                      max_abs_error=max(record["max_abs_error"], verdict.max_abs_error))
        return candidate, True
