"""The fuzz targets, without atheris: the fuzzer (run.py) and the replay test (test_fuzz.py) call
the same functions, so a stored crash reproduces exactly as it was found.

A target takes the fuzzed bytes, writes them where the loader reads them, and calls it. It
returns normally when the loader accepts the bytes or refuses them with an McompError: those are
the only two answers the CLI can turn into an exit code and one line. Anything else propagates.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import sys
import tempfile
import traceback
import warnings
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
from mcomp import data, model
from mcomp.errors import McompError
from mcomp.session import input_specs

from seeds import WEIGHTS, WEIGHTS_FILE, multi_input

ROOT = Path(model.__file__).resolve().parents[1]
MCOMP_DIRS = tuple(str(ROOT / d) for d in ("core", "cli", "passes"))


@cache
def _workdir() -> Path:
    """One folder per process, reused for every input: a temp dir per input would cost more than the
    load. In memory where there is /dev/shm: on ext4, rewriting a file flushes it (auto_da_alloc),
    which made file writes 80 % of the fuzzer's time."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="mcomp-fuzz-", dir=os.environ.get("MCOMP_FUZZ_WORKDIR", shm)))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # libFuzzer's exit skips this: hence the variable
    (folder / WEIGHTS_FILE).write_bytes(WEIGHTS.tobytes())
    return folder


def model_target(blob: bytes) -> None:
    """``model.load`` on the bytes as a ``.onnx`` file (beside the external-data seed's weights),
    then as stdin (``-``), which parses from memory and resolves no external data."""
    path = _workdir() / "model.onnx"
    path.write_bytes(blob)
    _allow(model.load, path)
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(blob))
    try:
        _allow(model.load, "-")
    finally:
        sys.stdin = saved


@cache
def _data_models():
    """The models the data target loads arrays for: one 4-D image input, and three mixed inputs."""
    multi = _workdir() / "multi-input.onnx"
    multi.write_bytes(multi_input())
    return model.load("builtin:digits").model, model.load(multi).model


def data_target(blob: bytes) -> None:
    """``data.load`` on the bytes as ``.npz`` and as ``.npy`` (numpy reads either by content, not
    by name), for each of the two models. What it accepts must be fit to run (issue 12): at least one
    example, each array finite and of its input's dtype; else AssertionError, a finding like an escape."""
    for suffix in (".npz", ".npy"):
        path = _workdir() / f"data{suffix}"
        path.write_bytes(blob)
        for loaded_model in _data_models():
            dataset = _allow(data.load, path, loaded_model, batch_size=2)
            if dataset is not None:
                assert dataset.describe()["samples"] > 0, "accepted no examples"
                for spec, feed in ((s, f) for f in dataset.feeds for s in input_specs(loaded_model)):
                    array = feed[spec.name]
                    assert array.dtype == spec.dtype, f"accepted {array.dtype} data for a {spec.dtype} input"
                    assert array.dtype.kind != "f" or np.isfinite(array).all(), "accepted non-finite data"


# arrays target: members of an .npz, each b"name\0" + .npy bytes, joined by this line.
MEMBER_SEP = b"\n#member#\n"


def pack(blob: bytes) -> bytes:
    """An .npz of the members in ``blob``, with the CRCs right: mutating an .npz itself almost always
    breaks a CRC, so its arrays seldom get past zipfile; mutating the members reaches ``from_arrays``."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name": a case worth fuzzing, not a finding
        with zipfile.ZipFile(buf, "w") as npz:
            for member in blob.split(MEMBER_SEP):
                name, _, content = member.partition(b"\0")
                npz.writestr(name.decode("utf-8", "replace") + ".npy", content)
    return buf.getvalue()


def arrays_target(blob: bytes) -> None:
    """The data target on ``pack(blob)``. Store an escape packed, in crashes/data/: a real .npz."""
    data_target(pack(blob))


def _allow(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except McompError:
        return None


TARGETS = {"model": model_target, "data": data_target, "arrays": arrays_target}


def escape_point(exc: BaseException) -> str:
    """Where an exception left mcomp's code: the innermost mcomp frame of its traceback, which is
    where the fix (a check, or a wider except) belongs. The type and that place identify a bug; for
    the data target's own assertions, which all fail in one place, the message does."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(MCOMP_DIRS)]
    frame = ours[-1] if ours else frames[-1]
    where = Path(frame.filename)
    where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where.name
    what = f"{type(exc).__name__} ({exc})" if isinstance(exc, AssertionError) else type(exc).__name__
    return f"{what} at {where}:{frame.lineno} in {frame.name}"


if __name__ == "__main__":  # python tests/fuzz/targets.py TARGET FILE: one input, traceback and all
    TARGETS[sys.argv[1]](Path(sys.argv[2]).read_bytes())
