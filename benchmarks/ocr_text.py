"""Rendered text lines for the PP-OCR recognizer, and the exact-string metric ``mcomp auto --metric`` takes.

``benchmarks/auto.py`` measures ``mcomp auto`` on PP-OCRv4 rec (from the rapidocr-onnxruntime wheel,
fetched like the test fixtures by ``tests/realmodels.py``). Top-1 accuracy means nothing for a CTC
recognizer, so the budget bounds exact-string accuracy instead: short strings of digits and Latin
letters (all in the model's dictionary) rendered with PIL in DejaVu Sans, preprocessed as rapidocr
does (height 48, aspect kept, (x/255 − 0.5)/0.5, right-padded with 0 to width 320), stored in an npz
with the strings as ``labels``. The metric decodes greedily: arg-max per step, repeats merged,
blanks dropped, indices mapped through the dictionary.

The dictionary ships in the model itself: the ONNX metadata key ``character`` holds one character a
line; rapidocr prepends the CTC blank and appends a space, which gives the model's 6625 classes.

    from ocr_text import exact_match       # mcomp auto … --metric benchmarks/ocr_text.py:exact_match
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 48, 320
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
# No "I" or "l": in DejaVu Sans they are the same vertical bar, and no reader can tell them apart.
ALPHABET = "0123456789ABCDEFGHJKLMNOPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# The model's path: set by auto.py (this module is loaded by mcomp from its file path, so the
# metric finds the dictionary through the environment rather than an argument).
MODEL_ENV = "MCOMP_BENCH_OCR_MODEL"


@functools.lru_cache(maxsize=4)
def dictionary(model_path: str) -> list[str]:
    """Class index → character: blank, the metadata's characters, then the space (rapidocr's order)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(model_path, load_external_data=False).metadata_props}
    return ["<blank>", *meta["character"].splitlines(), " "]


def decode(probs: np.ndarray, chars: list[str]) -> list[str]:
    """Greedy CTC decoding of [N, T, classes] scores."""
    texts = []
    for best in probs.argmax(-1):
        keep = [int(k) for i, k in enumerate(best) if k != 0 and (i == 0 or k != best[i - 1])]
        texts.append("".join(chars[k] for k in keep))
    return texts


def exact_match(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """Share of lines whose decoded string equals the label exactly (higher is better)."""
    chars = dictionary(os.environ[MODEL_ENV])
    probs = next(iter(outputs.values()))
    return float(np.mean([t == str(l) for t, l in zip(decode(probs, chars), labels)]))


def strings(n: int, seed: int) -> list[str]:
    """Short strings of 3-8 characters: mixed letters and digits, as on labels and plates."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(ALPHABET), size=int(rng.integers(3, 9)))) for _ in range(n)]


def render(text: str, *, size: int = 32, pad: int = 6) -> np.ndarray:
    """One text line → the recognizer's input [3, HEIGHT, WIDTH]: black on white, scaled to HEIGHT
    with its aspect kept, normalised to [-1, 1], right-padded with 0 as rapidocr's resize_norm_img."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(FONT), size)
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 255)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=0)
    width = min(WIDTH, int(np.ceil(HEIGHT * img.width / img.height)))
    line = np.asarray(img.resize((width, HEIGHT), Image.BILINEAR), np.float32)
    out = np.zeros((3, HEIGHT, WIDTH), np.float32)
    out[:, :, :width] = (line / 255.0 - 0.5) / 0.5
    return out


def dataset(n: int, seed: int, **options) -> tuple[np.ndarray, np.ndarray]:
    """(images [n, 3, HEIGHT, WIDTH], labels as a fixed-width unicode array: npz-safe without pickle)."""
    texts = strings(n, seed)
    return np.stack([render(t, **options) for t in texts]), np.array(texts)
