"""The concrete input shapes every figure is measured at, and where each dim came from (design §7).

A dynamic dim has no one right value, and the figure depends on it: a detector timed at 1×3×32×32
is 15× faster than at its real 320×320. So each dim is resolved once, in this order, and the report
says which it was:

1. ``data``: one example of the data (its first feed, batch dims cut to 1, the way a user runs it,
   or to the batch ``--input-shape`` gives);
2. ``--input-shape``: what the user gave;
3. ``model``: a static dim; a metadata entry the exporter wrote (``imgsz``, ``input_size``,
   ``img_size``, ``shape``, ``batch``); the same symbolic dim name given or static in another input;
4. ``assumed``: batch 1; height and width 224 for a 4-D float image input with 3 channels
   (NCHW or NHWC); any other dim ``DEFAULT_DIM`` (32). An assumed dim is listed with the option
   that sets it, so a user who sees "assumed" knows how to measure at the real size.

Cleverer guesses (a Reshape constant, a stride pattern) are left out on purpose: a wrong shape
stated as the model's own is worse than an honest assumption.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from mcomp.session import TensorSpec, input_specs

DEFAULT_DIM = 32  # an unknown non-batch, non-image dim
DEFAULT_IMAGE = 224  # height and width of a 3-channel image input
IMAGE_KEYS = ("imgsz", "img_size", "image_size", "input_size")
SOURCES = ("data", "--input-shape", "model", "assumed")
_NOT_BATCH = re.compile(r"seq|len|time|frame|token|step|sample", re.IGNORECASE)


@dataclass(frozen=True)
class InputShape:
    """One input's concrete shape, where it came from, and which dims mcomp had to assume."""

    name: str
    shape: tuple[int, ...]
    source: str  # one of SOURCES: the weakest source among its dynamic dims
    assumed_dims: tuple[int, ...] = ()
    placeholders: tuple[str, ...] = ()  # per dim, what to write in --input-shape (value or a letter)

    def describe(self) -> dict:
        out = {"shape": list(self.shape), "source": self.source, "assumed_dims": list(self.assumed_dims)}
        return out | ({"set_with": f"--input-shape {self.name}={','.join(self.placeholders)}"}
                      if self.assumed_dims else {})

    @property
    def text(self) -> str:
        return "×".join(map(str, self.shape)) if self.shape else "scalar"


def is_batch_dim(spec: TensorSpec, axis: int) -> bool:
    """Axis 0 when dynamic and not named like a sequence, or any dim named like a batch. A bare ``N`` or ``B``
    past axis 0 is a batch only where axis 0 is not one: onnx-asr's feature extractors take waveforms
    ``[batch_size, N]`` (N samples), which were assumed 1×1 and timed a whole file's batch as one run; a
    time-major ``[T, N, C]`` keeps its batch."""
    if spec.shape is None or axis >= len(spec.shape) or isinstance(spec.shape[axis], int):
        return False
    name = spec.shape[axis] or ""
    if "batch" in name.lower():
        return True
    if name in ("N", "B"):
        return axis == 0 or not is_batch_dim(spec, 0)
    return axis == 0 and not _NOT_BATCH.search(name)


def example_feed(feed: dict[str, np.ndarray], specs: list[TensorSpec],
                 batch: int | None = None) -> dict[str, np.ndarray]:
    """The feed a user would run: the batch dims of ``feed`` cut to ``batch`` (default 1). Inputs
    whose batch dim is static keep the data's own batch. Left whole when the batch dims disagree
    in size (then which dim is the batch is not clear)."""
    want = batch or 1
    axes = {s.name: [a for a in range(len(s.shape or ())) if is_batch_dim(s, a)] for s in specs}
    sizes = {feed[n].shape[a] for n, ax in axes.items() if n in feed for a in ax if a < feed[n].ndim}
    if not sizes or len(sizes) > 1 or min(sizes) <= want:
        return dict(feed)
    out = {}
    for name, array in feed.items():
        index = tuple(slice(0, want) if a in axes.get(name, ()) else slice(None) for a in range(array.ndim))
        # a 0-d input (silero-vad's sample rate) stays an array: indexed by (), numpy gives a scalar,
        # which onnxruntime refuses ("Unable to handle object of type numpy.int64")
        out[name] = array[index] if array.ndim else array
    return out


def batched_feeds(feeds: list[dict[str, np.ndarray]], specs: list[TensorSpec], batch: int | None,
                  n: int = 4) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` feeds as a user runs them: ``batch`` examples each (one where no --input-shape gives a
    batch), cut from the data's feeds, or joined from several where one holds fewer. The data is read in
    batches of 16, and ``--input-shape image=256,…`` was timed at 16: the latency ``mcomp auto`` searched
    at a compute-bound batch was another batch's. Examples are taken in order, again from the start where
    the data holds fewer than ``batch``; inputs without a batch axis come from the first feed. Feeds whose
    batched inputs are not all batched on dim 0 alike are cut only (``example_feed``)."""
    want = batch or 1
    first = feeds[0] if feeds else {}
    axes = {s.name: [a for a in range(len(s.shape or ())) if is_batch_dim(s, a)] for s in specs}
    batched = [name for name, found in axes.items() if found and name in first]
    sizes = {first[name].shape[0] for name in batched if first[name].ndim}
    if not batched or any(axes[name] != [0] for name in batched) or len(sizes) != 1 or min(sizes) >= want:
        return [example_feed(feed, specs, batch) for feed in feeds[:n]]
    total = sum(feed[batched[0]].shape[0] for feed in feeds)
    count = max(1, min(n, total // want))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in batched}
    taken, k = 0, 0
    while taken < count * want:
        feed, k = feeds[k % len(feeds)], k + 1
        take = min(feed[batched[0]].shape[0], count * want - taken)
        for name in batched:
            parts[name].append(feed[name][:take])
        taken += take
    joined = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    return [{**first, **{name: joined[name][j * want:(j + 1) * want] for name in batched}} for j in range(count)]


def given_batch(specs: list[TensorSpec], given: dict[str, tuple[int, ...]]) -> int | None:
    """The batch the user asked for with --input-shape, on an input whose dim 0 is its batch: with
    data, the user then says how many examples one run takes."""
    for spec in specs:
        if spec.name in given and given[spec.name] and is_batch_dim(spec, 0):
            return int(given[spec.name][0])
    return None


def _ints(text: str) -> list[int] | None:
    try:
        value = json.loads(text.replace("(", "[").replace(")", "]"))
    except (ValueError, TypeError):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) and v > 0 for v in value):
        return value
    return None


def _image_axes(spec: TensorSpec) -> tuple[int, int] | None:
    """(height, width) axes of a 4-D float input with 3 channels, NCHW or NHWC."""
    if spec.shape is None or len(spec.shape) != 4 or spec.dtype.kind != "f":
        return None
    if spec.shape[1] == 3:
        return (2, 3)
    if spec.shape[3] == 3:
        return (1, 2)
    return None


def _from_metadata(spec: TensorSpec, metadata: dict[str, str], single: bool) -> dict[int, int]:
    """Dims the exporter wrote down in metadata_props: image size for image inputs, batch, a full shape."""
    found: dict[int, int] = {}
    image = _image_axes(spec)
    for key in IMAGE_KEYS:
        size = _ints(metadata.get(key, ""))
        if image and size and len(size) in (1, 2):
            found |= {image[0]: size[0], image[1]: size[-1]}
            break
    batch = _ints(metadata.get("batch", ""))
    if batch and len(batch) == 1 and is_batch_dim(spec, 0):
        found.setdefault(0, batch[0])
    full = _ints(metadata.get("shape", "")) if single else None
    if full and spec.shape is not None and len(full) == len(spec.shape):
        found |= {i: v for i, v in enumerate(full) if i not in found}
    return found


def resolve(model, *, given: dict[str, tuple[int, ...]] | None = None,
            feed: dict[str, np.ndarray] | None = None) -> dict[str, InputShape]:
    """Every fed input's shape and its source. ``feed`` is one feed of the data (cut to one
    example here), ``given`` the bound ``--input-shape`` values. Inputs with no shape at all and
    none given are left out (running them needs --input-shape; the data loader says so)."""
    specs = input_specs(model)
    metadata = dict(getattr(model, "metadata_props", None) or {})
    ranks = {s.name: None if s.shape is None else len(s.shape) for s in specs}
    given = {n: v for n, v in (given or {}).items() if n in ranks and ranks[n] in (None, len(v))}
    batch = given_batch(specs, given)
    example = example_feed(feed, specs, batch) if feed else {}
    symbols: dict[str, tuple[int, str]] = {}  # a named dim's value wherever it is known, and its source
    for spec in specs:
        known = example.get(spec.name)
        for i, d in enumerate(spec.shape or ()):
            if isinstance(d, str) and d not in ("", "?"):
                if known is not None and known.ndim == len(spec.shape):
                    symbols.setdefault(d, (int(known.shape[i]), "data"))
                elif spec.name in given:
                    symbols.setdefault(d, (int(given[spec.name][i]), "--input-shape"))
    out = {}
    for spec in specs:
        if spec.name in example:
            dims = [int(x) for x in example[spec.name].shape]
            if batch and dims and is_batch_dim(spec, 0) and dims[0] < batch:  # joined from several feeds when run
                dims[0] = batch  # (``batched_feeds``): a data file's batch of 16 is not the 256 asked for
            out[spec.name] = InputShape(spec.name, tuple(dims), "data")
        elif spec.name in given:
            out[spec.name] = InputShape(spec.name, tuple(int(x) for x in given[spec.name]), "--input-shape")
        elif spec.shape is not None:
            out[spec.name] = fill(spec, _from_metadata(spec, metadata, len(specs) == 1), symbols)
    return out


def fill(spec: TensorSpec, meta: dict[int, int] | None = None,
         symbols: dict[str, tuple[int, str]] | None = None) -> InputShape:
    """``spec`` with each dynamic dim filled from another input's dim of the same name
    (``symbols``, updated here), the model's metadata (``meta``: axis → value), else assumed."""
    meta = meta or {}
    symbols = {} if symbols is None else symbols
    shape, sources, assumed, marks = [], [], [], []
    image = _image_axes(spec) or ()
    for i, d in enumerate(spec.shape):
        named = isinstance(d, str) and d not in ("", "?")
        if isinstance(d, int):
            value, source = d, "model"
        elif named and d in symbols:
            value, source = symbols[d]
        elif i in meta:
            value, source = meta[i], "model"
        else:
            value = 1 if is_batch_dim(spec, i) else DEFAULT_IMAGE if i in image else DEFAULT_DIM
            source = "assumed"
        if named and d not in symbols:
            symbols[d] = (value, source)  # the same name elsewhere takes the same value
        if source == "assumed":
            assumed.append(i)
        shape.append(value)
        sources.append(source)
        marks.append(str(value) if source != "assumed" or is_batch_dim(spec, i) else _letter(spec, i, image))
    order = [s for s in SOURCES if s in sources and s != "model"]
    return InputShape(spec.name, tuple(shape), order[-1] if order else "model", tuple(assumed), tuple(marks))


def _letter(spec: TensorSpec, axis: int, image) -> str:
    if image:
        return "H" if axis == image[0] else "W"
    name = spec.shape[axis]
    return name if isinstance(name, str) and re.fullmatch(r"[A-Za-z_]\w{0,15}", name) else f"D{axis}"


def concrete(shapes: dict[str, InputShape]) -> dict[str, tuple[int, ...]]:
    return {name: s.shape for name, s in shapes.items()}


def describe(shapes: dict[str, InputShape]) -> dict[str, dict]:
    return {name: s.describe() for name, s in shapes.items()}


def assumed_note(shapes: dict[str, InputShape], zeros: list[str] | tuple[str, ...] = ()) -> str:
    """The hint appended to a failure on synthetic data: the shapes mcomp assumed and how to set them, and
    ``zeros``, the integer and boolean inputs it filled with zeros (``data.zeroed_inputs``); "" when neither."""
    parts = []
    hinted = [s for s in shapes.values() if s.assumed_dims]
    if hinted:
        at = ", ".join(f"{s.name}={s.text}" for s in shapes.values())
        # one option per input, as the CLI takes them: "--input-shape a=… b=…" was refused as an extra argument
        sets = " ".join(f"--input-shape {s.name}={','.join(s.placeholders)}" for s in hinted)
        parts.append(f"measured at assumed shapes {at}; set {sets}")
    if zeros:
        several = len(zeros) > 1
        named = f"input{'s' if several else ''} {', '.join(zeros)} {'are' if several else 'is'}"
        parts.append(f"synthetic {named} all zeros (integers and booleans): give --data with the values the model "
                     "expects")
    return f" ({'; '.join(parts)})" if parts else ""


__all__ = ["InputShape", "resolve", "example_feed", "batched_feeds", "given_batch", "is_batch_dim", "fill", "concrete",
           "describe", "assumed_note", "DEFAULT_DIM", "DEFAULT_IMAGE"]
