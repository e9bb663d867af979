"""Data sets for calibration, evaluation and training (design §6).

A ``Dataset`` is a list of feeds (one ``{input name: array}`` dict per session run) with
optional labels per feed. Sources: ``.npz``/``.npy`` arrays keyed by input name (with an
optional ``labels`` array), a folder of images with declared preprocessing, or ``random``
(synthetic from the input spec; accuracy is then unknown and the report says so).

Array layouts accepted for an input of rank r:
- rank r: one batch; split along axis 0 into feeds of ``batch_size`` (or of the model's
  fixed leading dim), or along an inner axis named as the batch when dim 0 is fixed (an RNN
  state ``[layers, batch, hidden]``);
- rank r+1: stacked feeds, one per index of axis 0;
- rank 0 for a scalar input: the same value in every feed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np
import onnx_ir as ir

from mcomp import data_checks, shapes
from mcomp.data_spec import DataSpec, ImageFolderSpec
from mcomp.errors import BadInput, short
from mcomp.session import TensorSpec, input_specs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Dataset:
    feeds: list[dict[str, np.ndarray]]
    labels: list[np.ndarray] | None = None
    synthetic: bool = False
    source: str = ""
    notes: list[str] = field(default_factory=list)
    shapes: dict[str, shapes.InputShape] | None = None  # synthetic data: the shapes it was made at, and why
    inner_batch: dict[str, int] = field(default_factory=dict)  # inputs split along an inner axis: name → axis

    def __len__(self) -> int:
        return len(self.feeds)

    @property
    def samples(self) -> int:
        """Number of examples, counted along the batch axis of the first input."""
        return sum(next(iter(f.values())).shape[0] if next(iter(f.values())).ndim else 1 for f in self.feeds)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def head(self, n: int) -> "Dataset":
        return Dataset(self.feeds[:n], None if self.labels is None else self.labels[:n], self.synthetic, self.source,
                       self.notes, self.shapes, self.inner_batch)

    def describe(self) -> dict:
        return {"source": self.source, "feeds": len(self.feeds), "samples": self.samples,
                "labels": self.has_labels, "synthetic": self.synthetic, "notes": list(self.notes)}


def load(spec: DataSpec, model: ir.Model, *, input_shapes: dict[str, tuple[int, ...]] | None = None,
         batch_size: int = 16, synthetic_feeds: int = 8, seed: int = 0) -> Dataset:
    """Loads data for ``model`` and checks it against the model's inputs (names, ranks, static dims)."""
    if isinstance(spec, str) and spec.startswith("builtin:"):  # the packaged data sets, as in pipeline files
        from mcomp.embedded import builtin_path

        spec = str(builtin_path(spec[len("builtin:"):]))
    specs = input_specs(model)
    if isinstance(spec, ImageFolderSpec):
        return _load_images(spec, specs, model, input_shapes)
    if str(spec) == "random":
        return synthetic(specs, input_shapes=input_shapes, feeds=synthetic_feeds, seed=seed, model=model)
    path = Path(spec)
    if not path.exists():
        raise BadInput(f"{path}: no such data file or folder")
    if path.is_dir():
        return _load_images(ImageFolderSpec(images=path), specs, model, input_shapes)
    if path.suffix not in (".npz", ".npy"):
        raise BadInput(f"{path}: unknown data format; use .npz/.npy, an image folder, or 'random'")
    try:
        # Our own file handle, closed on every path (numpy leaves an invalid zip open until the garbage
        # collector finds it), and numpy's warnings about old headers ("created on Python 2") kept off
        # stderr: the array either loads and is checked below, or the error says why in one line.
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix == ".npy":
                arrays = {"": np.load(handle, allow_pickle=False)}
            else:
                with np.load(handle, allow_pickle=False) as loaded:
                    arrays = {k: loaded[k] for k in loaded.files}
    except Exception as exc:
        raise BadInput(f"{path}: cannot read arrays ({short(exc, 120)})") from None
    return from_arrays(arrays, specs, source=str(path), batch_size=batch_size)


def checkpoint_shapes(models, specs) -> dict[str, tuple[int, ...]] | None:
    """Where one of ``models`` is a PyTorch checkpoint, which records no input shape: one example's
    shapes from the first of the data ``specs`` that gives them (:func:`example_shapes`), else None."""
    from mcomp.model import is_checkpoint

    if not any(is_checkpoint(m) for m in models if m is not None):
        return None
    return next(filter(None, (example_shapes(spec) for spec in specs if isinstance(spec, (str, Path)))), None)


def example_shapes(spec) -> dict[str, tuple[int, ...]] | None:
    """One example's shape per array of a ``.npz``/``.npy`` data file (its first dim cut to 1; ``''``
    names a ``.npy``'s single array), read from the arrays' headers alone, labels left out; None for
    other data or a file these cannot be read from. What a PyTorch checkpoint, which records no input
    shape, is exported at when no --input-shape is given (``mcomp quantize crepe.pth --arch … --data
    tones.npz`` asked for one though the data said [256, 1024])."""
    import zipfile

    path = Path(str(spec)) if isinstance(spec, (str, Path)) else None
    if path is None or path.suffix not in (".npz", ".npy") or not path.is_file():
        return None

    def header(handle) -> tuple[int, ...]:
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if fmt.read_magic(handle) == (1, 0) else fmt.read_array_header_2_0
        return read(handle)[0]  # (shape, fortran order, dtype)

    try:
        if path.suffix == ".npy":
            with open(path, "rb") as handle:
                found = {"": header(handle)}
        else:
            with zipfile.ZipFile(path) as archive:
                found = {}
                for member in archive.namelist():
                    with archive.open(member) as handle:
                        found[member.removesuffix(".npy")] = header(handle)
    except Exception:
        return None  # the loader says what is wrong with the file, once it reads it
    found.pop("labels", None)
    return {k: (1, *shape[1:]) for k, shape in found.items() if len(shape) >= 1} or None


def from_arrays(arrays: dict[str, np.ndarray], specs: list[TensorSpec], *, source: str,
                batch_size: int = 16) -> Dataset:
    labels = arrays.pop("labels", None)
    if set(arrays) in ({""}, {"arr_0"}):  # a .npy, or np.savez(path, array): unnamed
        if len(specs) != 1:
            raise BadInput(f"{source}: a single unnamed array feeds only single-input models; "
                           f"this one has inputs {[s.name for s in specs]}")
        arrays = {specs[0].name: next(iter(arrays.values()))}
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = [k for k in arrays if k not in names]
    if missing or extra:
        raise BadInput(f"{source}: data names do not match the model's inputs "
                       f"(missing: {missing or 'none'}, unknown: {extra or 'none'}; model inputs: {names})")
    for s in specs:  # in the file's own indexing, before it is split into feeds
        data_checks.check_array(np.asarray(arrays[s.name]), s.name, source)
    inner = {s.name: axis for s in specs if (axis := _inner_batch_axis(np.asarray(arrays[s.name]), s)) is not None}
    per_input = {s.name: _split(arrays[s.name], s, source, batch_size, inner.get(s.name)) for s in specs}
    counts = {n: len(v) for n, v in per_input.items() if v is not None}
    if not counts:
        feeds = [{n: arrays[n] for n in names}]
    else:
        once = [n for n, c in counts.items() if c == 1]
        many = set(counts.values()) - {1}
        if once and len(many) == 1 and _same_batches(per_input, once, inner):
            # given once, used in every run: an RNN's initial state beside 32 windows of one example each
            for n in once:
                per_input[n] = per_input[n] * next(iter(many))
            counts = {n: len(v) for n, v in per_input.items() if v is not None}
        if len(set(counts.values())) > 1:
            raise BadInput(f"{source}: inputs hold different numbers of examples {counts}")
        n_feeds = next(iter(counts.values()))
        feeds = [{n: (per_input[n][i] if per_input[n] is not None else _cast(arrays[n], s, source))
                  for n, s in zip(names, specs)} for i in range(n_feeds)]
    for feed in feeds:
        for s in specs:
            check_shape(feed[s.name], s, source)
    return Dataset(feeds, _split_labels(labels, feeds, specs[0].name, source), False, source, inner_batch=inner)


def _split(array: np.ndarray, spec: TensorSpec, source: str, batch_size: int,
           inner: int | None = None) -> list[np.ndarray] | None:
    """Feeds for one input, or None for a constant (the same value in every feed). ``inner``: the
    axis past 0 its examples lie along (``_inner_batch_axis``)."""
    array = _cast(array, spec, source)
    rank = len(spec.shape) if spec.shape is not None else array.ndim
    if array.ndim == rank + 1:
        return list(array)
    if array.ndim != rank:
        raise BadInput(f"{source}: array {spec.name!r} has shape {array.shape}, "
                       f"but input {spec.name!r} has rank {rank} (shape {_fmt(spec.shape)})")
    if rank == 0:
        return None
    lead = spec.shape[0] if spec.shape else None
    if inner is not None:
        # the batch is an inner axis (an RNN state [layers, batch, hidden], silero-vad's [2, batch, 128]):
        # split there, as the inputs batched on axis 0 are; kept whole, one feed paired the first 16
        # windows with the states of all 64, and onnxruntime's LSTM refused the feed
        n = array.shape[inner]
        return [array[(slice(None),) * inner + (slice(i, i + batch_size),)] for i in range(0, n, batch_size)]
    if isinstance(lead, int):
        if array.shape[0] == lead and rank > 1 and not _batch_like(spec):
            return None  # a fixed-size tensor such as an RNN state: the same in every feed
        if array.shape[0] % lead:
            raise BadInput(f"{source}: {array.shape[0]} examples for {spec.name!r} do not split into "
                           f"the model's fixed batch of {lead}")
        step = lead
    else:
        step = batch_size  # the last batch may be smaller: the batch dim is dynamic
    return [array[i:i + step] for i in range(0, array.shape[0], step)]


def _same_batches(per_input: dict, once: list[str], inner: dict[str, int]) -> bool:
    """Whether every feed of the other inputs holds as many examples as the inputs given once hold (along their
    batch axis): a state for one example beside feeds of 16 is a mistake to say, not to repeat."""
    sizes = {per_input[n][0].shape[inner.get(n, 0)] for n in once if per_input[n][0].ndim > inner.get(n, 0)}
    others = {feed.shape[inner.get(n, 0)] for n, feeds in per_input.items() if feeds is not None and n not in once
              for feed in feeds if feed.ndim > inner.get(n, 0)}
    return len(sizes) == 1 and others == sizes


def _inner_batch_axis(array: np.ndarray, spec: TensorSpec) -> int | None:
    """The axis past 0 named as the batch, for an array of the input's rank whose dim 0 is the
    input's fixed dim 0; None otherwise."""
    if not spec.shape or array.ndim != len(spec.shape) or not isinstance(spec.shape[0], int) \
            or array.shape[0] != spec.shape[0]:
        return None
    return next((a for a in range(1, array.ndim) if shapes.is_batch_dim(spec, a)), None)


def _batch_like(spec: TensorSpec) -> bool:
    return bool(spec.shape) and spec.shape[0] == 1


def _split_labels(labels, feeds, first_input: str, source: str) -> list[np.ndarray] | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim == 0:
        raise BadInput(f"{source}: 'labels' must have one entry per example, got a scalar")
    sizes = [feed[first_input].shape[0] if feed[first_input].ndim else 1 for feed in feeds]
    stacked = len(labels) == len(feeds) and sum(sizes) != len(labels)
    if stacked:
        return [np.atleast_1d(l) for l in labels]
    if sum(sizes) != len(labels):
        raise BadInput(f"{source}: {len(labels)} labels for {sum(sizes)} examples")
    out, start = [], 0
    for size in sizes:
        out.append(labels[start:start + size])
        start += size
    return out


def _cast(array: np.ndarray, spec: TensorSpec, source: str) -> np.ndarray:
    """The input's dtype where no value changes meaning; see ``mcomp.data_checks`` for which casts."""
    return data_checks.cast(array, spec.name, spec.dtype, source)


def check_shape(array: np.ndarray, spec: TensorSpec, source: str) -> None:
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape) or any(
            isinstance(d, int) and d != a for d, a in zip(spec.shape, array.shape)):
        raise BadInput(f"{source}: array {spec.name!r} of shape {tuple(array.shape)} does not fit "
                       f"input {spec.name!r} of shape {_fmt(spec.shape)}")


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]" if shape is not None else "?"


def concrete_shape(spec: TensorSpec, input_shapes: dict[str, tuple[int, ...]] | None) -> tuple[int, ...]:
    """The input's shape with its dynamic dims filled: from --input-shape, else as ``mcomp.shapes``
    assumes (batch 1, image 224, others 32)."""
    if input_shapes and spec.name in input_shapes:
        shape = tuple(input_shapes[spec.name])
        check_shape(np.broadcast_to(np.uint8(0), shape), TensorSpec(spec.name, spec.dtype, spec.shape), "--input-shape")
        return shape
    if spec.shape is None:
        raise BadInput(f"input {spec.name!r} has no shape in the model; give it with --input-shape {spec.name}=...")
    return shapes.fill(spec).shape


def zeroed_inputs(specs: list[TensorSpec]) -> list[str]:
    """The inputs ``synthetic`` fills with zeros (integers and booleans: safe as any index): a model that
    branches on one (silero's sample rate ``sr``) fails on synthetic data, and the error says so."""
    return [s.name for s in specs if s.dtype.kind != "f"]


def synthetic(specs: list[TensorSpec], *, input_shapes=None, feeds: int = 8, seed: int = 0,
              model: ir.Model | None = None) -> Dataset:
    """Seeded synthetic inputs: standard normal floats, zeros for integer and boolean inputs. With
    ``model``, dynamic dims are resolved by ``mcomp.shapes`` (metadata, shared dim names); the
    Dataset keeps those shapes, so a failure at an assumed shape can say how to set one."""
    rng = np.random.default_rng(seed)
    unknown = set(input_shapes or {}) - {s.name for s in specs}
    if unknown:
        raise BadInput(f"--input-shape names unknown inputs {sorted(unknown)}; model inputs: {[s.name for s in specs]}")
    resolved = shapes.resolve(model, given=input_shapes) if model is not None else {}
    for s in specs:
        shape = concrete_shape(s, input_shapes)  # checks --input-shape against the static dims
        if s.name not in resolved:
            given = s.name in (input_shapes or {})
            resolved[s.name] = shapes.InputShape(s.name, shape, "--input-shape") if given else shapes.fill(s)
    data_checks.check_synthetic_size({s.name: _origin(s, resolved[s.name]) for s in specs},
                                     {s.name: s.dtype for s in specs}, feeds)
    out = []
    for _ in range(feeds):
        feed = {}
        for s in specs:
            shape = resolved[s.name].shape
            if s.dtype.kind == "f":
                feed[s.name] = rng.standard_normal(shape).astype(s.dtype)
            else:
                feed[s.name] = np.zeros(shape, dtype=s.dtype)
        out.append(feed)
    notes = ["synthetic inputs (standard normal); accuracy unknown, fidelity on noise"]
    return Dataset(out, None, True, "random", notes, resolved)


def _origin(spec: TensorSpec, shape: shapes.InputShape) -> shapes.InputShape:
    """Where a shape came from, for a message: the pipeline hands on the shapes it resolved as if given
    with --input-shape; one that is the model's own (static, or what mcomp assumes) is said to be that."""
    if shape.source != "--input-shape" or spec.shape is None:
        return shape
    own = shapes.fill(spec)
    return own if own.shape == shape.shape else shape


def _image_size(spec: ImageFolderSpec, target: TensorSpec, model: ir.Model | None,
                input_shapes) -> tuple[int, int, str]:
    """(height, width, why) the images are resized to: ``size:``, else the model's static dims, else
    the size ``mcomp.shapes`` resolves (--input-shape, or the model's own: ``imgsz`` and the like in its
    metadata). A size mcomp would only assume (224) is refused: resizing real images to a guess would
    measure a model at a size it was never meant for, so the error names the option that sets it."""
    if spec.size:
        return spec.size[0], spec.size[1], ""
    axes = (2, 3) if spec.layout == "NCHW" else (1, 2)
    if all(isinstance(target.shape[a], int) for a in axes):
        return target.shape[axes[0]], target.shape[axes[1]], ""
    resolved = shapes.resolve(model, given=input_shapes).get(target.name) if model is not None else None
    if resolved is None or set(axes) & set(resolved.assumed_dims):
        option = (resolved.describe().get("set_with") if resolved is not None else None) or f"--input-shape {target.name}=..."
        raise BadInput(f"{spec.images}: the model's image size is dynamic and not in its metadata; set it with "
                       f"{option} (or 'size: [height, width]' under the data entry of a pipeline file)")
    why = "set by --input-shape" if resolved.source == "--input-shape" else "the size in the model's metadata"
    return resolved.shape[axes[0]], resolved.shape[axes[1]], why


def _load_images(spec: ImageFolderSpec, specs: list[TensorSpec], model: ir.Model | None = None,
                 input_shapes=None) -> Dataset:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        raise BadInput("image folders need Pillow: pip install pillow") from None
    folder = Path(spec.images)
    if not folder.is_dir():
        raise BadInput(f"{folder}: not a folder of images")
    image_inputs = [s for s in specs if s.dtype.kind == "f" and s.shape is not None and len(s.shape) == 4]
    target = next((s for s in specs if s.name == spec.input), None) if spec.input else (image_inputs[0] if len(specs) == 1 and image_inputs else None)
    if target is None:
        raise BadInput(f"{folder}: image data needs a single 4-D float input (or 'input:' naming one); model inputs: {[s.name for s in specs]}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = ([(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
             if classes else [(f, None) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES])
    if not files:
        raise BadInput(f"{folder}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    nchw = spec.layout == "NCHW"
    channels = target.shape[1] if nchw else target.shape[3]
    height, width, why = _image_size(spec, target, model, input_shapes)
    mode = "L" if channels == 1 else "RGB"
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    images, labels = [], []
    for path, label in files:
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert(mode).resize((width, height)), dtype=np.float32)
        except Exception as exc:
            raise BadInput(f"{path}: cannot read image ({exc})") from None
        pixels = (pixels.reshape(height, width, -1) * spec.scale - mean) / std
        images.append(pixels.transpose(2, 0, 1) if nchw else pixels)
        labels.append(label)
    batch = np.stack(images).astype(target.dtype)
    arrays = {target.name: batch}
    if classes:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    loaded = from_arrays(arrays, specs, source=str(folder), batch_size=spec.batch_size)
    if why:  # the model does not fix the size: say which one the images were resized to, and why
        loaded.notes.append(f"images resized to {height}×{width} ({why})")
    return loaded


def bind_input_shapes(shapes: dict[str, tuple[int, ...]] | None, model: ir.Model) -> dict[str, tuple[int, ...]] | None:
    """Names an unnamed ``--input-shape`` after the model's single input; rejects unknown names."""
    if not shapes:
        return shapes
    specs = input_specs(model)
    names = [s.name for s in specs]
    if "" in shapes:
        if len(names) != 1:
            raise BadInput(f"--input-shape needs NAME=... for a model with inputs {names}")
        shapes = {names[0]: shapes[""]}
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise BadInput(f"--input-shape names unknown inputs {unknown}; model inputs: {names}")
    for spec in specs:  # rank and static dims must fit, or MACs and synthetic data are wrong
        if spec.name in shapes:
            check_shape(np.broadcast_to(np.uint8(0), shapes[spec.name]), spec, "--input-shape")
    return shapes
