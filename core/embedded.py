"""The embedded default: a small CNN trained on sklearn's digits, with its held-out split.

Built by ``scripts/train_digits.py``; used by ``configs/quickstart.yaml`` so that the
quickstart needs no user files. Referenced in pipelines as ``builtin:NAME``.
"""

from __future__ import annotations

from pathlib import Path

from mcomp.errors import BadInput

ASSETS = Path(__file__).parent / "assets"
BUILTINS = {
    "digits": "digits_cnn.onnx",
    "digits-eval": "digits_eval.npz",
    "digits-train": "digits_train.npz",
}


def builtin_path(name: str) -> Path:
    if name not in BUILTINS:
        raise BadInput(f"unknown builtin {name!r} (valid: {', '.join(BUILTINS)})")
    return ASSETS / BUILTINS[name]
