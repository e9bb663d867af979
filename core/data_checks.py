"""What makes data unusable before any model runs on it (issue 12): non-finite or empty arrays,
an element type that does not fit the input, and synthetic inputs too large for this machine.

Each check answers with one line that names the array (or input), where the problem is and what
to do, as bad input (exit 2). Without them NaN data sails through optimize and prune (cosine nan,
exit 0), hangs a taylor prune or a distillation, and crashes quantize's calibration; an empty
array is an IndexError deep in compare; a 1×3×200000×200000 input is a MemoryError of 894 GiB.

Casts: float → another float width is done (``np.savez`` of Python floats gives float64, the
common case, and the values are the same numbers); int or bool → an integer input is done when
every value fits the input's type. int or bool → a float input is refused: integer image data is
nearly always raw pixels (0–255) saved before the model's preprocessing, and casting would feed
the model numbers it was never trained on without a word.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mcomp.errors import BadInput


def check_array(array: np.ndarray, name: str, source: str) -> None:
    """Refuses an empty array, and a float array holding NaN or ±inf (naming the first index)."""
    if array.size == 0:
        raise BadInput(f"{source}: array {name!r} is empty (shape {tuple(array.shape)}); give at least one example")
    if array.dtype.kind not in "fc":
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    bad = ~finite
    first = np.unravel_index(int(np.argmax(bad)), array.shape) if array.ndim else ()
    value = array[first] if array.ndim else array[()]
    what = "NaN" if np.isnan(value) else ("inf" if np.real(value) > 0 else "-inf")
    count = int(bad.sum())
    at = f"at index [{', '.join(str(int(i)) for i in first)}]" if array.ndim else "(a scalar)"
    raise BadInput(f"{source}: array {name!r} holds {what} {at} ({count:,} non-finite value"
                   f"{'s' if count > 1 else ''} in all); data must be finite")


def cast(array: np.ndarray, name: str, dtype: np.dtype, source: str) -> np.ndarray:
    """``array`` as the input's ``dtype``, where that changes no value's meaning (module docstring)."""
    array = np.asarray(array)
    if array.dtype == dtype:
        return array
    have, want = array.dtype.kind, dtype.kind
    if have == "f" and want == "f":
        with np.errstate(over="ignore"):
            out = array.astype(dtype)
        if not np.isfinite(out).all():  # finite float64 beyond float32's range becomes inf (found by tests/fuzz)
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
            raise BadInput(f"{source}: array {name!r} holds {array[index]:g} at index {list(index)}, beyond the range "
                           f"of input {name!r}'s {dtype}")
        return out
    if have in "iub" and want in "iub":
        if have != "b" and array.size:
            info = np.iinfo(dtype) if want != "b" else None
            low, high = array.min(), array.max()
            if info is not None and (low < info.min or high > info.max):
                raise BadInput(f"{source}: array {name!r} is {array.dtype} with values {low}..{high}, which do not "
                               f"fit input {name!r} of type {dtype}")
            if want == "b" and (low < 0 or high > 1):
                raise BadInput(f"{source}: array {name!r} is {array.dtype} with values {low}..{high}; input {name!r} "
                               f"is bool (0 or 1)")
        return array.astype(dtype)
    if want == "O" and have in "US":  # a string input (onnxruntime reads str objects): np.savez of texts is <U…
        return array.astype(object)
    hint = ("; integer data for a float input is usually raw pixels: apply the model's preprocessing "
            "(scale, mean/std) and save float32" if have in "iub" and want == "f" else "")
    expected = "strings" if want == "O" else dtype
    raise BadInput(f"{source}: array {name!r} is {array.dtype}, but input {name!r} expects {expected}{hint}")


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable from /proc/meminfo, lowered to what a
    cgroup (v2) limit leaves; the free physical pages where there is no /proc; None when unknown."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            found = min(found, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return found


def check_synthetic_size(shapes: dict, dtypes: dict[str, np.dtype], feeds: int) -> None:
    """Refuses synthetic inputs that would not fit in memory, before allocating them: ``feeds``
    feeds of every input at its resolved shape (``shapes``: name → ``mcomp.shapes.InputShape``), plus
    the float64 draw each float input is made from. Names the largest input, its shape and where that
    shape came from, with the option that sets it."""
    sizes = {name: int(np.prod(s.shape, dtype=object)) * dtypes[name].itemsize for name, s in shapes.items()}
    if not sizes:
        return
    draw = max(int(np.prod(s.shape, dtype=object)) * 8 for s in shapes.values())
    needed = feeds * sum(sizes.values()) + draw
    available = available_memory()
    if available is None or needed <= available:
        return
    name = max(sizes, key=sizes.get)
    shape = shapes[name]
    if shape.source == "--input-shape":
        how = f"give a smaller one with --input-shape {name}=..."
    elif shape.assumed_dims:
        how = f"set a smaller one with --input-shape {name}={','.join(shape.placeholders)}"
    else:
        how = "the model declares this shape (--input-shape sets only its dynamic dims); give --data with real inputs"
    raise BadInput(f"input {name!r} at {shape.text} ({dtypes[name]}, shape from {_origin(shape)}) needs "
                   f"{_gib(needed)} for {feeds} synthetic feed{'s' if feeds > 1 else ''}, more than the "
                   f"{_gib(available)} of memory available; {how}")


def _origin(shape) -> str:
    return {"--input-shape": "--input-shape", "model": "the model", "assumed": "an assumption",
            "data": "the data"}.get(shape.source, shape.source)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


__all__ = ["check_array", "cast", "available_memory", "check_synthetic_size"]
