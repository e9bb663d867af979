"""Shared test setup.

Puts this folder on sys.path so tests (and benchmarks, which do the same by
hand) can ``import realmodels``, and offers ``real_model``: a session-scoped
factory, ``real_model("ppocr-det") -> realmodels.RealModel``, fetched from the
model cache (downloading once on first use).  Tests may equally call
``realmodels.fetch(name)`` directly.
"""

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import realmodels  # noqa: E402


@pytest.fixture(scope="session")
def real_model():
    cache: dict[str, realmodels.RealModel] = {}

    def get(name: str) -> realmodels.RealModel:
        if name not in cache:
            cache[name] = realmodels.fetch(name)
        return cache[name]

    return get
