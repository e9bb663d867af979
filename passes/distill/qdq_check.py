"""Before a QDQ student is trained: does onnxruntime compute it as the torch copy does?

The torch copy runs the Q/DQ arithmetic as written, as onnxruntime does at ``disable``/``basic``.
At ``extended``/``all`` (onnxruntime's default, and mcomp's sessions') onnxruntime fuses
DQ→op→Q into integer kernels; on an x86 CPU without VNNI those multiply u8 activations by s8
weights into saturating 16-bit pairs, so a model with full 8-bit weights computes something
else (issue 12: up to 0.99 apart on logits of ±5). Training would then fit arithmetic the
deployed model does not compute. 7-bit weights (``mcomp quantize`` on such CPUs) cannot saturate.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mcomp import evaluate
from mcomp import model as model_io
from mcomp.errors import BadInput

TOLERANCE = 0.02  # of the output's largest magnitude: a rounding step apart is agreement, saturation is not
# ... and where onnxruntime at DEPLOYED computes what basic does (no fused kernel departs from the Q/DQ as written),
# a torch copy up to this far apart is the same arithmetic: a float difference of 1e-6 in one Conv moves a value
# across a rounding boundary, one quantization step, and the steps add up through the layers (EfficientWord-Net's
# QDQ ResNet-50: 1.4e-6 after 60 nodes, a step (0.024) at the next DequantizeLinear, 5.8 % of the output at the end)
ROUNDING = 0.2
DEPLOYED = "all"  # the optimization level of onnxruntime's and mcomp's sessions by default


def gap(torch_out: list[np.ndarray], ort_out: list[np.ndarray]) -> tuple[float, float]:
    """The largest difference over the float outputs, and the largest magnitude onnxruntime gave."""
    pairs = [(t, o) for t, o in zip(torch_out, ort_out) if np.issubdtype(np.asarray(o).dtype, np.floating)]
    diff = max((float(np.max(np.abs(t.astype(np.float64) - o))) for t, o in pairs if o.size), default=0.0)
    size = max((float(np.max(np.abs(o))) for _, o in pairs if o.size), default=0.0)
    return diff, size


def disagrees(diff: float, size: float) -> bool:
    return diff > TOLERANCE * max(size, 1e-6)


def torch_outputs(student: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The torch copy of ``student`` (integer weights exposed as float shadows, as distill trains them) on ``feeds``."""
    import torch

    from mcomp.passes.distill import qdq
    from mcomp.torch_graph import to_torch

    exposed = model_io.copy(student)
    qdq.expose(exposed)
    with torch.no_grad():
        outs = to_torch(exposed)(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
    return [o.numpy() for o in outs]


def _rounding(diff: float, size: float) -> bool:
    return diff <= ROUNDING * max(size, 1e-6)


def _saturable(student: ir.Model, target) -> bool:
    """Whether onnxruntime's fused int8 kernels may saturate on ``student``: an x86 CPU without VNNI, and an int8
    weight a DequantizeLinear reads beyond ±64 (onnxruntime's 7-bit weights, reduce_range: −64…64, cannot)."""
    if target.provider != "cpu" or target.arch != "x86" or target.vnni:
        return False
    for node in student.graph:
        weight = node.inputs[0].const_value if node.op_type == "DequantizeLinear" and node.inputs else None
        if weight is not None and weight.dtype == ir.DataType.INT8:
            values = weight.numpy()
            if values.size and (values.min() < -64 or values.max() > 64):  # 255·64·2 fits int16, 255·127·2 not
                return True
    return False


def check(student: ir.Model, feeds: dict[str, np.ndarray], providers: list[str], threads: int | None,
          strict: bool) -> str | None:
    """Nothing when onnxruntime at ``DEPLOYED`` computes ``student`` on ``feeds`` as its torch copy does; else the
    one-line reason: raised as bad input when ``strict``, returned as a note otherwise."""
    from mcomp.passes.quantize.target import detect

    torch_out = torch_outputs(student, feeds)
    data = model_io.to_bytes(student)
    names = [v.name for v in student.graph.outputs]
    run = lambda level: evaluate.session(data, providers, threads, optimization=level).run(names, feeds)  # noqa: E731
    deployed = run(DEPLOYED)
    diff, size = gap(torch_out, deployed)
    if not disagrees(diff, size):
        return None
    written = run("basic")  # the Q/DQ arithmetic as written (its DQ of weights folded, exactly)
    target = detect(providers)
    fused, fused_size = gap(written, deployed)
    # the fused kernels compute what is written, up to the rounding of their own requantization, where they
    # cannot saturate (saturation, not rounding, was the 0.99 on logits of ±5)
    basic = not disagrees(fused, fused_size) or (not _saturable(student, target) and _rounding(fused, fused_size))
    if basic and _rounding(diff, size):
        return (f"the torch copy of this QDQ student is up to {diff:.3g} apart from onnxruntime on outputs of "
                f"±{size:.3g} (at optimization basic {gap(torch_out, written)[0]:.3g}): kernels that compute in "
                "another order round a few values across a quantization step, and the steps add up through the "
                "layers; trained as written")
    cause = ("its fused int8 kernels saturate u8×s8 products on this CPU (no VNNI)" if not basic and not target.vnni
             else "its fused integer kernels compute it otherwise" if not basic
             else "even at basic, so the torch copy is not the model onnxruntime runs")
    what = (f"onnxruntime ({providers[0]}, optimization {DEPLOYED}) computes this QDQ student up to {diff:.3g} apart "
            f"from its torch copy on outputs of ±{size:.3g}: {cause}")
    if strict:
        fix = "re-quantize the float model with 7-bit weights (mcomp quantize does that on this CPU)" if not basic \
            else "distill the float model and quantize it afterwards"
        raise BadInput(f"distill: {what}; training would fit arithmetic the deployed model does not compute. "
                       f"{fix[0].upper()}{fix[1:]}, or give --no-qdq-check to train against the Q/DQ arithmetic as written "
                       "(what onnxruntime computes at basic)")
    return (f"{what}; trained against the Q/DQ arithmetic as written (--no-qdq-check), which onnxruntime computes "
            "at optimization basic: deploy it at basic, or re-quantize with 7-bit weights")
