"""``--mode static``: QDQ int8 weights and activations whose ranges are calibrated on data.

onnxruntime's ``quantize_static`` builds every candidate; the activation ranges are calibrated
once and cached in the work folder, so later candidates (budget trials, guard variants) reuse
them. Before the units are listed, Concats and outputs whose parts' ranges differ too much for
one 8-bit scale are held in float (``shared_scale``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from mcomp.passes.quantize.schemes.base import register
from mcomp.passes.quantize.schemes.ort import OrtScheme, find_units
from mcomp.passes.quantize.target import COMPUTE_OPS, INT8_FLOW_OPS, PASS_THROUGH_OPS


@register("static")
class Static(OrtScheme):
    calibrates: ClassVar[str] = "static quantization calibrates activation ranges on it"
    opset: ClassVar[int | None] = 10  # QuantizeLinear/DequantizeLinear
    takes_per_channel: ClassVar[bool] = True
    op_types: ClassVar[tuple[str, ...]] = COMPUTE_OPS + INT8_FLOW_OPS + PASS_THROUGH_OPS

    def adjust(self) -> None:
        """Concats and outputs whose parts' ranges differ too much for one 8-bit scale stay float."""
        from mcomp.passes.quantize import shared_scale

        cfg = self.cfg
        self.ctx.progress("quantize: shared-scale check", 0, 1)
        found = shared_scale.find(self.prepared.proto, self.calibration.feeds, self.ctx.providers, cfg.max_range_ratio)
        for wide in found:
            for name in wide.kept_float:
                self.prepared.float_only.setdefault(name, wide.reason())
            self.notes.append(f"kept float: {wide.op_type} {wide.node!r} ({wide.reason()}; --max-range-ratio "
                              f"{cfg.max_range_ratio:g})")
        self.details["shared_scale"] = [w.to_dict() for w in found]

    def find(self):
        cfg = self.cfg
        self.activations = self.target.activations if cfg.activations == "auto" else cfg.activations
        self.feeds = self.calibration.feeds
        if cfg.calibration != "minmax" and self.feeds:
            # onnxruntime's histogram collector stacks every feed's arrays: a smaller last batch breaks it
            shapes = {k: np.shape(v) for k, v in self.feeds[0].items()}
            self.feeds = [f for f in self.feeds if {k: np.shape(v) for k, v in f.items()} == shapes]
        return find_units(self.prepared, self.op_types, self.feeds[0] if self.feeds else None)

    def setup(self, model, calibration) -> None:
        super().setup(model, calibration)
        cfg = self.cfg
        self.details["calibration"] = {**calibration.describe(), "method": cfg.calibration,
                                       **({"percentile": cfg.percentile} if cfg.calibration == "percentile" else {})}

    def describe(self) -> str:
        cfg = self.cfg
        return (f"static QDQ, {'U8' if self.activations == 'uint8' else 'S8'}S8 "
                f"({'symmetric' if cfg.symmetric else 'asymmetric'} activations), "
                f"{'per-channel' if self.per_channel else 'per-tensor'} weights"
                f"{', 7-bit range' if self.target.reduce_range else ''}, {cfg.calibration} calibration")

    def _build(self, exclude: set[str], out: Path, only: list[str] | None) -> None:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        cfg = self.cfg
        extra = {"ActivationSymmetric": cfg.symmetric, "WeightSymmetric": True}
        if cfg.calibration == "percentile":
            extra["CalibPercentile"] = cfg.percentile
        cache = self.workdir / "calibration.json"
        if cfg.calibration == "entropy" and not cache.exists():
            self._calibrate_entropy(cache)
        quantize_static(str(self.source), str(out), self._reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(self.op_types), per_channel=self.per_channel,
                        reduce_range=self.target.reduce_range,
                        activation_type=QuantType.QUInt8 if self.activations == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=sorted(exclude), nodes_to_quantize=only,
                        calibrate_method=self._method(), calibration_cache_path=cache, extra_options=extra)

    def _reader(self) -> "FeedReader":
        """The calibration feeds, reporting each one read: calibrating a large model takes minutes."""
        return FeedReader(self.feeds, lambda done, total: self.ctx.progress("quantize: calibration", done, total))

    def _method(self):
        from onnxruntime.quantization import CalibrationMethod

        return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}[self.cfg.calibration]

    def _calibrate_entropy(self, cache: Path) -> None:
        """KL-divergence ranges with 2048 histogram bins. ``quantize_static`` passes no bin counts to the
        calibrator, whose defaults (128 bins, 128 quantized bins) leave one candidate threshold — the full
        range, i.e. min-max; so the ranges are computed here and handed over through its cache."""
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

        calibrator = create_calibrator(self.source, list(self.op_types), augmented_model_path=self.workdir / "augmented.onnx",
                                       calibrate_method=self._method(),
                                       extra_options={"num_bins": 2048, "num_quantized_bins": 128,
                                                      "symmetric": self.cfg.symmetric})
        calibrator.collect_data(self._reader())
        save_tensors_data(calibrator.compute_data(), cache)


class FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds; ``progress(done, total)`` hears of
    each feed handed out (onnxruntime runs the model on each as it reads it)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], progress=None):
        self.feeds, self.progress = feeds, progress
        self._it = iter(feeds)
        self._read = 0

    def get_next(self):
        feed = next(self._it, None)
        if feed is not None and self.progress is not None:
            self.progress(self._read, len(self.feeds))
            self._read += 1
        return feed

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.feeds[start_index:end_index])
        self._read = start_index

    def rewind(self) -> None:
        self._it = iter(self.feeds)
        self._read = 0
