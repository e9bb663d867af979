"""Coverage-guided fuzzing of mcomp's loaders with atheris (libFuzzer for Python).

    python tests/fuzz/run.py model -runs=100000 -timeout=10 -rss_limit_mb=2048
    python tests/fuzz/run.py data --findings out/ -runs=100000
    python tests/fuzz/run.py model --minimize crash-file
    python tests/fuzz/targets.py model crash-file      (one input, with its traceback)

Targets (targets.py): model (.onnx file and stdin), data (.npz/.npy file), arrays (.npz members).

A run in its own process: atheris.Fuzz() ends with sys.exit. The seeds (seeds.py) are written to
``--corpus`` (a temp folder by default), where libFuzzer also keeps the inputs that found new
coverage. Without ``--findings`` the first escape stops the run, as libFuzzer does; with it, the
run goes on, keeping the first input of each escape point, so one long run finds every distinct bug.
Arguments starting with ``-`` go to libFuzzer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Instrumented for coverage: mcomp itself, and the pure-Python code under it that reads the input
# (onnx's protobuf parsing and checker are C++, invisible to atheris). Only the target's own: numpy
# (with .npy header parsing) and onnx_ir each take most of a minute to instrument on a loaded machine.
_READERS = {"model": ["onnx_ir"], "data": ["numpy.lib", "zipfile"], "arrays": ["numpy.lib"]}
_TARGET = next((a for a in sys.argv[1:] if a in _READERS), None)
with atheris.instrument_imports(include=["mcomp", "seeds", "targets", *_READERS.get(_TARGET, [])]):
    import targets
    from seeds import SEEDS


class Findings:
    """Keep-going mode: each escape point's first input, and the counts, in a folder. Warnings are
    kept too (where raised, and one input each): not errors, but extra lines on a user's stderr.
    summary.json is rewritten every 1000 inputs, since libFuzzer ends the process without atexit."""

    def __init__(self, folder: Path, target: str) -> None:
        self.folder, self.target = folder, target
        self.runs, self.escapes, self.warnings = 0, {}, {}
        folder.mkdir(parents=True, exist_ok=True)
        self.write()

    def __call__(self, blob: bytes) -> None:
        self.runs += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                targets.TARGETS[self.target](blob)
            except Exception as exc:  # BaseException (KeyboardInterrupt, SystemExit) still stops the run
                self._keep(self.escapes, targets.escape_point(exc), str(exc), blob, "escape")
        for w in caught:
            key = f"{w.category.__name__} at {Path(w.filename).name}:{w.lineno}"
            self._keep(self.warnings, key, str(w.message), blob, "warning")
        if self.runs % 1000 == 0:
            self.write()

    def _keep(self, seen: dict, key: str, message: str, blob: bytes, kind: str) -> None:
        if key not in seen:
            name = f"{kind}-{len(seen)}"
            (self.folder / name).write_bytes(blob)
            seen[key] = {"file": name, "message": message[:300], "count": 0}
            self.write()
            print(f"\n== new {kind}: {key} -> {self.folder / name}", file=sys.stderr, flush=True)
        seen[key]["count"] += 1

    def write(self) -> None:
        summary = {"target": self.target, "runs": self.runs, "escapes": self.escapes, "warnings": self.warnings}
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=1))


def minimize(target, blob: bytes) -> bytes:
    """Delta debugging by hand (libFuzzer's -minimize_crash re-executes argv[0], a script here):
    drop ever smaller chunks while the same escape point comes out."""
    def key(candidate: bytes) -> str | None:
        try:
            target(candidate)
        except Exception as exc:
            return targets.escape_point(exc)
        return None

    want, chunk = key(blob), len(blob) // 2
    if want is None:
        raise SystemExit("the input does not escape: nothing to minimize")
    while chunk:
        start, shrunk = 0, False
        while start < len(blob):
            candidate = blob[:start] + blob[start + chunk:]
            if key(candidate) == want:
                blob, shrunk = candidate, True
            else:
                start += chunk
        if not shrunk:
            chunk //= 2
    print(f"{want}: {len(blob)} bytes", file=sys.stderr)
    return blob


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", choices=sorted(targets.TARGETS))
    parser.add_argument("--corpus", type=Path, help="corpus folder (seeded here; default: a temp folder)")
    parser.add_argument("--findings", type=Path, help="keep going; first input per escape point goes here")
    parser.add_argument("--minimize", type=Path, help="shrink this escaping input, write it to FILE.min")
    args, libfuzzer = parser.parse_known_args()
    if args.minimize:
        out = args.minimize.with_name(args.minimize.name + ".min")
        out.write_bytes(minimize(targets.TARGETS[args.target], args.minimize.read_bytes()))
        return
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix=f"mcomp-fuzz-{args.target}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for name, blob in SEEDS[args.target]().items():
        (corpus / f"seed-{name}").write_bytes(blob)
    fn = Findings(args.findings, args.target) if args.findings else targets.TARGETS[args.target]
    atheris.Setup([sys.argv[0], *libfuzzer, str(corpus)], fn)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
