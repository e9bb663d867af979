"""What the torch_io modules share: the warning type, silencing torch, and torch's error text."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

# Loggers that chatter during export (opset notices, "torchvision is not installed", the
# onnxscript version converter's fallback notice); silenced while we export.
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript")


class TorchExportWarning(UserWarning):
    """Something about the exported model the user should know (static batch, opset kept)."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences torch's and onnxscript's warnings and log chatter for the duration."""
    saved = {}
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _warn(message: str) -> None:
    warnings.warn(message, TorchExportWarning, stacklevel=3)
