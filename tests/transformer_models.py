"""Small transformers for the tests and benchmarks: BERT, GPT-2 and ViT built from Hugging Face
``transformers`` configs (random weights, fixed seed) and exported by ``torch.onnx.export`` (dynamo) at opset 18.

Real architectures exported the way users export them, not graphs written by hand: the head-split
Reshape/Transpose, the score and context MatMuls, LayerNorm over the hidden axis, GPT-2's
Reshape→Gemm→Reshape layers are exactly what the exporter writes.  ``transformers`` is part of the
``test`` extra; nothing is downloaded (configs only, weights drawn from a seeded generator)::

    import sys; sys.path.insert(0, "<repo>/tests")
    import transformer_models as tm
    m = tm.build("bert")            # TransformerModel(name, path, config, feeds, analytic_macs)
    sess.run(None, m.feeds(batch=2, seq=32))
    c = tm.build("bert", head="classifier")  # BERT/ViT with a classification head: logits out

``head="classifier"`` (BERT and ViT) exports the ``…ForSequenceClassification`` /
``…ForImageClassification`` model with :data:`LABELS` classes, whose output is the logits, not the
hidden state (what pruning the hidden width needs); ``analytic_macs`` does not count the head.

Exports are cached (they take seconds) as ``<cache>/transformers-<version>-torch-<version>/<name>.onnx``
under ``$MCOMP_MODEL_CACHE`` or ``~/.cache/mcomp/models``, written atomically like ``realmodels``.
Plain functions only (no pytest), so ``benchmarks/`` can import it too.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from realmodels import CACHE_DIR, write_atomically

__all__ = ["NAMES", "SIZES", "TransformerModel", "build", "analytic_macs"]

# The three shapes of the issue: 4 layers, hidden 256, 4 heads, FFN 1024.
SIZES = {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024, "vocab": 1000, "image": 64, "patch": 8}
NAMES = ("bert", "gpt2", "vit")
LABELS = 10  # classes of the ``head="classifier"`` variants


@dataclass(frozen=True)
class TransformerModel:
    name: str
    path: Path
    config: dict  # layers, hidden, heads, ffn, vocab (text) or image/patch (vit)
    feeds: Callable[..., dict[str, np.ndarray]]  # feeds(batch=1, seq=…, seed=0)
    input_names: tuple[str, ...] = field(default=())

    def macs(self, batch: int = 1, seq: int | None = None) -> int:
        """The analytic multiply-accumulate count of one forward pass (see :func:`analytic_macs`)."""
        return analytic_macs(self.name, self.config, batch=batch, seq=seq)


def analytic_macs(name: str, cfg: dict, batch: int = 1, seq: int | None = None) -> int:
    """MACs of the matrix products, counted by hand from the architecture: per layer the Q/K/V and
    output projections (4·s·h²), the score and context products (2·s²·h), the FFN (2·s·h·f); GPT-2 adds
    the tied LM head (s·h·V), ViT its patch embedding (s·3·p²·h) and pooler (h²), BERT nothing else
    (the pooler is not exported).  Element-wise ops (LayerNorm, GELU, Softmax) are not counted."""
    h, f, L = cfg["hidden"], cfg["ffn"], cfg["layers"]
    if name == "vit":
        patches = (cfg["image"] // cfg["patch"]) ** 2
        s = patches + 1  # the class token
        embed = patches * 3 * cfg["patch"] ** 2 * h
        extra = embed + h * h  # pooler dense
    else:
        s = seq or 128
        extra = s * h * cfg["vocab"] if name == "gpt2" else 0
    per_layer = 4 * s * h * h + 2 * s * s * h + 2 * s * h * f
    return batch * (L * per_layer + extra)


def _module(name: str, cfg: dict):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    common = dict(attn_implementation="eager")
    head = cfg.get("head")
    if head is not None and (head != "classifier" or name == "gpt2"):
        raise ValueError(f"head {head!r}: only bert and vit take head='classifier'")
    if head and name == "bert":
        inner = tf.BertForSequenceClassification(tf.BertConfig(
            vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"],
            num_attention_heads=cfg["heads"], intermediate_size=cfg["ffn"], num_labels=LABELS, **common))
    elif head and name == "vit":
        inner = tf.ViTForImageClassification(tf.ViTConfig(
            hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
            intermediate_size=cfg["ffn"], image_size=cfg["image"], patch_size=cfg["patch"], num_labels=LABELS,
            **common))
    elif name == "bert":
        inner = tf.BertModel(tf.BertConfig(vocab_size=cfg["vocab"], hidden_size=cfg["hidden"],
                                           num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                                           intermediate_size=cfg["ffn"], add_pooling_layer=False, **common),
                             add_pooling_layer=False)
    elif name == "gpt2":
        inner = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=cfg["vocab"], n_embd=cfg["hidden"], n_layer=cfg["layers"],
                                                 n_head=cfg["heads"], n_inner=cfg["ffn"], n_positions=512,
                                                 bos_token_id=0, eos_token_id=0, **common))
    else:
        inner = tf.ViTModel(tf.ViTConfig(hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"],
                                         num_attention_heads=cfg["heads"], intermediate_size=cfg["ffn"],
                                         image_size=cfg["image"], patch_size=cfg["patch"], **common))

    class Exported(torch.nn.Module):
        """Plain tensors in and out (the exporter takes no cache objects or dict outputs)."""

        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            if head and name == "bert":
                return self.inner(input_ids=args[0], attention_mask=args[1]).logits
            if head:
                return self.inner(pixel_values=args[0]).logits
            if name == "bert":
                return self.inner(input_ids=args[0], attention_mask=args[1], use_cache=False).last_hidden_state
            if name == "gpt2":
                return self.inner(input_ids=args[0], use_cache=False).logits
            return self.inner(pixel_values=args[0]).pooler_output

    return Exported().eval()


def _inputs(name: str, cfg: dict, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "vit":
        return {"pixel_values": rng.standard_normal((batch, 3, cfg["image"], cfg["image"])).astype(np.float32)}
    ids = rng.integers(0, cfg["vocab"], (batch, seq)).astype(np.int64)
    if name == "gpt2":
        return {"input_ids": ids}
    return {"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int64)}


def _export(name: str, cfg: dict, path: Path) -> None:
    import torch

    module = _module(name, cfg)
    example = {k: torch.from_numpy(v) for k, v in _inputs(name, cfg, 2, 16, 0).items()}
    if name == "vit":
        shapes = {"args": ({0: torch.export.Dim("batch", min=1, max=1024)},)}
    else:
        dims = {0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("seq", min=2, max=512)}
        shapes = {"args": tuple(dims for _ in example)}
    output = "logits" if name == "gpt2" or cfg.get("head") else ("pooler_output" if name == "vit" else "last_hidden_state")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            torch.onnx.export(module, tuple(example.values()), str(path), input_names=list(example),
                              output_names=[output], opset_version=18, dynamo=True, dynamic_shapes=shapes,
                              external_data=False, verbose=False)


def build(name: str, **overrides) -> TransformerModel:
    """The cached ONNX export of ``name`` (bert, gpt2 or vit) with :data:`SIZES` (or ``overrides``)."""
    import torch
    import transformers

    if name not in NAMES:
        raise ValueError(f"unknown transformer {name!r}; choose from {', '.join(NAMES)}")
    cfg = {**SIZES, **overrides}
    tag = "-".join(f"{k}{v}" for k, v in sorted(overrides.items()))
    folder = CACHE_DIR / f"transformers-{transformers.__version__}-torch-{torch.__version__.split('+')[0]}"
    path = folder / (f"{name}-{tag}.onnx" if tag else f"{name}.onnx")
    if not path.exists():
        write_atomically(path, lambda tmp: _export(name, cfg, tmp))
    names = ("pixel_values",) if name == "vit" else (("input_ids",) if name == "gpt2" else ("input_ids", "attention_mask"))

    def feeds(batch: int = 1, seq: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
        return _inputs(name, cfg, batch, seq, seed)

    return TransformerModel(name, path, cfg, feeds, names)
