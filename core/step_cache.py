"""Results of pipeline prefixes on disk, so runs that share their first steps do not redo them.

A search (``mcomp auto``) tries many pipelines that begin the same way: twenty trials may share one
prune and differ only in what follows. The result of steps ``1..k`` is stored under a key made of
what determines it: the input model's sha256, the data, shapes, seed and provider, and every
step's name and options up to ``k``. A later run looks up its longest stored prefix and starts
after it. The step records (summary, notes, details) are stored beside the model, so the report
of a run that hit the cache reads as if the steps had run.

Writes are atomic (temp file + rename), so concurrent workers sharing the folder never read half
a file; two workers computing the same prefix at once both write it, and either copy is valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx_ir as ir


class StepCache:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = 0  # steps not run because a stored prefix covered them

    @staticmethod
    def base(model_sha256: str, pipeline, input_shapes) -> str:
        """What every prefix of this run shares: the input, the data, the shapes, seed and provider."""
        data = pipeline.data.model_dump(mode="json")
        for role, spec in data.items():  # a data file's identity is its path and its content's size and time
            if isinstance(spec, str) and spec != "random" and os.path.exists(pipeline.resolve(spec)):
                stat = os.stat(pipeline.resolve(spec))
                data[role] = [pipeline.resolve(spec), stat.st_size, stat.st_mtime_ns]
        shapes = {k: list(v) for k, v in (input_shapes or {}).items()}
        return json.dumps([model_sha256, data, shapes, pipeline.seed, pipeline.provider], sort_keys=True)

    @staticmethod
    def key(base: str, steps, upto: int) -> str:
        prefix = [(s.name, s.config.model_dump(mode="json")) for s in steps[:upto]]
        return hashlib.sha256(json.dumps([base, prefix], sort_keys=True).encode()).hexdigest()[:32]

    def longest(self, base: str, steps) -> tuple[int, ir.Model | None, list[dict]]:
        """The longest stored prefix: (steps it covers, its model, its step records); (0, None, [])."""
        for upto in range(len(steps), 0, -1):
            key = self.key(base, steps, upto)
            model_path, record_path = self.folder / f"{key}.onnx", self.folder / f"{key}.json"
            if model_path.exists() and record_path.exists():
                try:
                    records = json.loads(record_path.read_text())
                    model = ir.load(str(model_path))
                except (OSError, ValueError):  # a damaged entry is a miss, not a failure
                    continue
                self.hits += upto
                return upto, model, [dict(r, cached=True) for r in records]
        return 0, None, []

    def store(self, base: str, steps, upto: int, model: ir.Model, records: list[dict]) -> None:
        from mcomp import model as model_io
        from mcomp import report

        key = self.key(base, steps, upto)
        try:
            blob = model_io.to_bytes(model)
        except ValueError:  # a model over protobuf's 2 GB is not cached: the prefix runs again
            return
        model_io.write_bytes_atomic(self.folder / f"{key}.onnx", blob)  # the model first: the record marks it whole
        model_io.write_bytes_atomic(self.folder / f"{key}.json", report.to_json(records).encode())

