"""Execution providers and a model's input/output signature. Sessions themselves are made in
``mcomp.evaluate`` (the one home of running models)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import onnx_ir as ir

from mcomp.errors import BadInput, ProviderUnavailable

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype and dims (int, or str/None when dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    @property
    def dynamic_dims(self) -> list[int]:
        return [i for i, d in enumerate(self.shape or ()) if not isinstance(d, int)]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "dtype": str(self.dtype),
            "shape": None if self.shape is None else [d if isinstance(d, int) else (d or "?") for d in self.shape],
        }


PROVIDER_CHOICES = (*PROVIDERS, "auto")


def check_provider(provider: str) -> str:
    """``provider`` when it is one mcomp knows (cpu, cuda, auto), else bad input naming the choices
    and what this machine has. Every command's --provider and a pipeline's ``provider:`` come here
    before any work, so a typo is one line and exit 2, as an unavailable ``cuda`` is."""
    if provider not in PROVIDER_CHOICES:
        raise BadInput(f"unknown provider {provider!r}; choose from {', '.join(PROVIDER_CHOICES)} "
                       f"(available here: {', '.join(_available_names())})")
    return provider


def _available_names() -> list[str]:
    available = available_providers()
    return [k for k, v in PROVIDERS.items() if v in available]


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(provider: str = "auto") -> list[str]:
    """Maps ``cpu|cuda|auto`` to onnxruntime's provider list; an unavailable explicit one is exit 2."""
    check_provider(provider)
    available = available_providers()
    if provider == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    wanted = PROVIDERS[provider]
    if wanted not in available:
        names = ", ".join(_available_names())
        raise ProviderUnavailable(f"provider {provider!r} is not available here (available: {names})")
    return [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]


def provider_name(providers: list[str]) -> str:
    return {v: k for k, v in PROVIDERS.items()}.get(providers[0], providers[0])


def _dtype(elem_type) -> np.dtype:
    try:
        return np.dtype(ir.DataType(elem_type).numpy())
    except (ValueError, TypeError, NotImplementedError):  # an unknown or numpy-less element type
        return np.dtype("float32")


def _specs(values) -> list[TensorSpec]:
    specs = []
    for value in values:
        shape = None
        if value.shape is not None:
            # Some exporters write -1 for a dynamic dim; it means the same as a named one.
            shape = tuple((d if d >= 0 else None) if isinstance(d, int) else (d.value if hasattr(d, "value") else None)
                          for d in value.shape)
        dtype = _dtype(value.dtype) if value.dtype is not None else np.dtype("float32")
        specs.append(TensorSpec(value.name, dtype, shape))
    return specs


def input_specs(model: ir.Model) -> list[TensorSpec]:
    """Graph inputs that must be fed (initializers listed as inputs, old-style, are skipped)."""
    return _specs(v for v in model.graph.inputs if v.name not in model.graph.initializers)


def output_specs(model: ir.Model) -> list[TensorSpec]:
    return _specs(model.graph.outputs)


__all__ = ["TensorSpec", "PROVIDER_CHOICES", "check_provider", "available_providers", "resolve_providers", "input_specs",
           "output_specs", "provider_name"]
