"""What matters when pruning: the importance criteria, registered by name.

One registry serves both kinds of pruning. A criterion declares its name, whether it takes
gradients (and so needs data), and how it scores:

- ``weights(w, evidence)``: a score per weight of a tensor, for unstructured pruning (the lowest
  scored weights are zeroed). ``Prune``'s ``method`` names such a criterion directly
  (``method: magnitude`` = unstructured pruning with the ``magnitude`` criterion).
- ``channels(w, axis, evidence)``: a score per slice of a tensor along its channel axis, for
  structured pruning (``method: structured`` with ``importance: NAME``). ``structured.scores``
  brings every tensor the criterion ``reads`` in a channel group to the group's numbering,
  normalizes and sums them; a group with none of them is scored by ``fallback`` instead.
  A criterion that reads no tensor gives ``group(channels, evidence)`` instead.

The numbers are pure functions in ``mcomp.kernels.importance``; what is here is the glue.

Adding a criterion: write its numeric part in ``mcomp.kernels.importance`` (e.g.
``def fisher(w, grad): ...``), then register it below with one line, e.g.::

    register(Criterion("fisher", "squared gradient", gradients=True,
                       weights=lambda w, ev: imp.fisher(w, ev.grad)))

It becomes a choice of ``method`` if it scores weights, and of ``importance`` if it scores
channels (the options' ``Literal`` choices are read from here); ``gradients=True`` makes the
pass ask for data and hands it ``evidence.grad`` / ``evidence.taylor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

    from mcomp.passes.prune.structured.groups import Member


class _Kernels:
    """``mcomp.kernels.importance``, imported on the first score: the prune command's help reads the
    criteria's names from here and should not pay for numpy."""

    def __getattr__(self, name: str):
        from mcomp.kernels import importance

        return getattr(importance, name)


imp = _Kernels()


@dataclass(frozen=True)
class Evidence:
    """What a criterion may read besides the weights (per tensor)."""

    rng: np.random.Generator
    grad: np.ndarray | None = None  # Σ over batches of ∂L/∂w (None: no gradient for this tensor)
    taylor: np.ndarray | None = None  # Σ over batches of |w · ∂L/∂w| (unstructured only)


def filters(member: Member) -> bool:
    """The weight tensors that carry a group's channels: producer and depthwise filters, consumer slices,
    embedding tables (``table``: the hidden width's, ``structured.hidden``)."""
    return member.role == "table" or (member.role in ("producer", "consumer", "depthwise") and member.input_index == 1)


def norm_scales(member: Member) -> bool:
    """The scale γ of the group's BatchNormalization/InstanceNormalization."""
    return (member.role == "param" and member.node.op_type in ("BatchNormalization", "InstanceNormalization")
            and member.input_index == 1)


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    gradients: bool = False  # takes ∂L/∂w: the pass needs data
    weights: Callable[[np.ndarray, Evidence], np.ndarray] | None = None  # unstructured: a score per weight
    channels: Callable[[np.ndarray, int, Evidence], np.ndarray] | None = None  # structured: per slice on axis
    group: Callable[[int, Evidence], np.ndarray] | None = None  # structured, reading no tensor: per channel
    reads: Callable[[Member], bool] = filters  # structured: which tensors of a group ``channels`` scores
    fallback: str | None = None  # structured: the criterion for a group with none of those tensors
    lacking: str = ""  # what such a group lacks, for the report's note

    @property
    def scores_weights(self) -> bool:
        return self.weights is not None

    @property
    def scores_channels(self) -> bool:
        return self.channels is not None or self.group is not None


_REGISTRY: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    if not (criterion.scores_weights or criterion.scores_channels):
        raise ValueError(f"criterion {criterion.name!r} scores neither weights nor channels")
    _REGISTRY[criterion.name] = criterion
    return criterion


def get(name: str) -> Criterion:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown importance {name!r}; choose from {', '.join(_REGISTRY)}") from None


def names(kind: str) -> tuple[str, ...]:
    """The criteria that score ``"weights"`` (unstructured) or ``"channels"`` (structured), in order."""
    return tuple(c.name for c in _REGISTRY.values() if getattr(c, f"scores_{kind}"))


# --------------------------------------------------------------------------- the built-in criteria

register(Criterion("magnitude", "|w|", weights=lambda w, ev: imp.magnitude(w)))
register(Criterion("l1", "L1 norm of the channel's slices", channels=lambda w, axis, ev: imp.channel_norm(w, axis, 1)))
register(Criterion("l2", "L2 norm of the channel's slices", channels=lambda w, axis, ev: imp.channel_norm(w, axis, 2)))
register(Criterion("bn", "|γ| of the channel's BatchNorm scale", channels=lambda w, axis, ev: imp.magnitude(w),
                   reads=norm_scales, fallback="l1", lacking="BatchNorm scale"))
# Taylor scores differ by orders of magnitude between layers (a converged model's gradients are tiny
# and uneven): normalised per tensor they rank weights within and across layers.
register(Criterion("taylor", "first-order Taylor |w·∂L/∂w|", gradients=True,
                   weights=lambda w, ev: imp.normalize(ev.taylor),
                   channels=lambda w, axis, ev: imp.channel_taylor(w, ev.grad, axis), fallback="l1", lacking="gradient"))
register(Criterion("random", "uniform noise (a baseline)", weights=lambda w, ev: imp.random_scores(w.shape, ev.rng),
                   group=lambda channels, ev: imp.random_scores((channels,), ev.rng)))
