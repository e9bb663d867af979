"""Quantization (``mcomp quantize``) that is never slower than its input, and explains its accuracy.

Modes: ``static`` (QDQ, int8 weights, calibrated activations: uint8 on x86), ``dynamic``
(int8 weights, activations quantized at run time; MatMul/attention/LSTM), ``weight-only``
(int4/int8 block-wise MatMulNBits), ``fp16`` and ``kmeans`` (weight sharing with a Huffman-coded
size). Each mode is a ``Scheme`` in ``schemes/`` (one module each, registered by name; its
docstring says how to add one). onnxruntime's quantizers build the candidates; mcomp prepares
the graph for them (``prepare``), and one flow for every scheme (``flow``) keeps the result
within an accuracy budget (``budget``, ``sensitivity``) and sends back to float what does not
pay on the target provider (``guard``).

```yaml
steps:
  - quantize: {mode: static, calibration: percentile, min_fidelity: 0.995, explain: true}
  - quantize: {mode: weight-only, bits: 4, block_size: 32}
  - quantize: {mode: weight-only, max_slowdown: 1.3}   # block size and accuracy level chosen by measurement
```

``weight-only`` is a size mode: its int4 kernels (MatMulNBits) may be slower than float MatMul on
a CPU at batch 1, and the guard then bounds the slowdown the user accepts (``max_slowdown``,
default ``guard.DEFAULT_MAX_SLOWDOWN``) instead of requiring a gain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from mcomp.errors import NotApplicable
from mcomp.pass_base import Context, Need, Pass, PassConfig, PassResult
from mcomp.passes.quantize import schemes

if TYPE_CHECKING:  # onnx and onnxruntime are imported where the pass runs (fast --help)
    import onnx_ir as ir


class Quantize(Pass):
    """Static/dynamic int8, weight-only int4/int8, fp16 or k-means weight sharing; latency- and accuracy-guarded."""

    name: ClassVar[str] = "quantize"
    summary: ClassVar[str] = "int8/int4/fp16/k-means quantization, never slower than the input, within an accuracy budget"
    needs: ClassVar[frozenset[str]] = frozenset({"data?"})
    checks_fidelity: ClassVar[bool] = True  # its accuracy budget compares outputs with the input

    class Config(PassConfig):
        mode: Literal[schemes.MODES] = Field(schemes.MODES[0], description=schemes.help_text())
        activations: Literal["auto", "uint8", "int8"] = Field(
            "auto", description="static: activation type; auto = uint8 on x86 CPU, int8 elsewhere")
        per_channel: bool = Field(True, description="static/dynamic: one weight scale per output channel "
                                                    "(upgrades opset < 13)")
        symmetric: bool = Field(False, description="static: symmetric activation ranges (weights are always symmetric)")
        calibration: Literal["minmax", "percentile", "entropy"] = Field("minmax", description="static: activation ranges")
        percentile: float = Field(99.999, gt=90, le=100, description="calibration percentile: share of values kept in range")
        bits: int | None = Field(None, ge=2, le=8, description="weight-only: 4 or 8 [4]; kmeans: 2-8 [4]")
        block_size: int | None = Field(None, ge=16, le=4096, description="weight-only: weights per scale (power of "
                                                                        "2); none = the largest of 128/64/32 within "
                                                                        "the fidelity budget")
        accuracy_level: int | None = Field(None, ge=0, le=4, description="weight-only: MatMulNBits compute type "
                                                                         "(0/1 float32, 2 fp16, 3 bf16, 4 int8 "
                                                                         "activations); none = the faster of 1 and 4 "
                                                                         "within the fidelity budget")
        max_slowdown: float | None = Field(None, ge=1.0, description="weight-only (a size mode): the slowdown "
                                                                     "accepted for the smaller model, as a latency "
                                                                     "ratio to the input [1.5]; speed modes must be "
                                                                     "faster than the input")
        keep_io_types: bool = Field(True, description="fp16: keep float32 model inputs and outputs")
        exclude: list[str] = Field(default_factory=list, description="node names/globs, op types, or a previous "
                                                                     "report (.json) whose exclusions to reuse")
        latency_guard: bool = Field(True, description="measure on the target provider; send back to float what "
                                                      "does not pay; never return a slower model")
        guard_runs: int = Field(30, ge=5, le=1000, description="interleaved rounds per latency measurement")
        max_drop: float | None = Field(None, ge=0, le=1, description="accuracy budget with labels (0.005 = half a point)")
        min_fidelity: float | None = Field(None, ge=-1, le=1, description="fidelity floor against the input, "
                                                                        "without labels [no budget given: whole cosine "
                                                                        "≥ 0.98, worst-slice (or centered, "
                                                                        "residual) ≥ 0.95]")
        fidelity_metric: Literal["cosine", "top1"] = Field("cosine", description="what min_fidelity bounds")
        explain: bool = Field(False, description="ranked per-layer error table (SQNR, cosine) in the report")
        force: bool = Field(False, description="quantize a model that is already quantized")
        calibration_feeds: int = Field(64, ge=1, le=100000, description="feeds of the data used to calibrate")
        max_range_ratio: float = Field(16.0, gt=1, description="static: a Concat whose inputs' ranges, or a graph "
                                                               "output whose slices' ranges, differ by more than this "
                                                               "stays float (one 8-bit scale would round the small "
                                                               "ones away)")

        @model_validator(mode="after")
        def _bits_fit_mode(self):
            takes = schemes.get(self.mode).bits
            if self.bits is not None and takes and self.bits not in takes:
                raise ValueError(f"{self.mode} bits must be {' or '.join(map(str, takes))}")
            if self.bits is not None and not takes:
                which = " and ".join(name for name, cls in schemes.REGISTRY.items() if cls.bits)
                raise ValueError(f"bits applies to {which}, not {self.mode} (int8 is fixed)")
            if self.block_size is not None and self.block_size & (self.block_size - 1):
                raise ValueError("block_size must be a power of 2")
            if self.max_slowdown is not None and not schemes.get(self.mode).slowdown_bounded:
                raise ValueError(f"max_slowdown applies to the size modes whose kernels differ from the input's "
                                 f"(weight-only); {self.mode} must be faster than the input or is not timed")
            return self

    def requires(self) -> tuple[Need, ...]:
        """A scheme that calibrates (static) cannot run without data; the others fall back to synthetic inputs."""
        why = schemes.get(self.config.mode).calibrates
        return (Need(("calibration", "evaluation"), why),) if why else ()

    def call(self, model: ir.Model, ctx: Context) -> PassResult:
        from mcomp.passes.quantize import flow, prepare

        found = prepare.quantized_ops(model)
        if found and not self.config.force:
            ops = ", ".join(f"{op} ×{n}" for op, n in sorted(found.items()))
            # NotApplicable: ``mcomp auto`` leaves quantize out of later trials (pipecat's smart-turn, a QDQ model:
            # 15 of 47 trials failed on it), as the default space never sets ``force``
            raise NotApplicable(f"quantize: the model is already quantized ({ops}); quantizing it again compounds "
                                "the error. Give --force to quantize its remaining float ops anyway", "quantize")
        return flow.run(self.config, model, ctx)
