"""The teacher: loaded, checked against the student, and run once over the data.

Its outputs (and hint tensors) are computed once per example before training and kept:
without input augmentation they do not change between epochs. The teacher runs on
onnxruntime (the pipeline's providers) or on the torch copy of its graph, whichever is
faster on the first batches; both are timed, and the report says which ran.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from mcomp import evaluate, graph
from mcomp import model as model_io
from mcomp import session as session_io
from mcomp.errors import BadInput, McompError, short
from mcomp.passes.distill.samples import Samples, runnable


@dataclass
class TeacherRun:
    backend: str
    timings: dict[str, float] = field(default_factory=dict)  # backend -> seconds per example
    notes: list[str] = field(default_factory=list)


def load(spec: str | None, arch: str | None, reference: ir.Model | None, student: ir.Model,
         input_shapes) -> tuple[ir.Model, str]:
    """The teacher model and where it came from: ``spec`` (ONNX or a PyTorch checkpoint), else the reference."""
    if spec:
        shapes = input_shapes or _batch_one_shapes(student)
        try:
            return model_io.load(spec, model_io.LoadOptions(arch=arch, input_shapes=shapes)).model, spec
        except BadInput as exc:  # --arch names MODEL's architecture: the teacher's is --teacher-arch
            if arch is None and "name the architecture with --arch" in str(exc):
                raise BadInput(f"{spec}: the teacher is a state_dict, which holds only weights; name its "
                               "architecture with --teacher-arch module:factory (--arch is MODEL's)") from None
            raise
    if reference is None:
        raise BadInput("distill: no teacher; give --teacher MODEL (in a pipeline the input model is the teacher)")
    return graph.copy(reference), "the pipeline's input model"


def _batch_one_shapes(student: ir.Model) -> dict[str, tuple[int, ...]] | None:
    from mcomp.data import concrete_shape

    try:
        return {s.name: concrete_shape(s, None) for s in session_io.input_specs(student)}
    except BadInput:
        return None


def input_map(teacher: ir.Model, student: ir.Model) -> dict[str, str]:
    """Student input name → teacher input name: by name, else by position (an exported checkpoint)."""
    t_names = [s.name for s in session_io.input_specs(teacher)]
    s_names = [s.name for s in session_io.input_specs(student)]
    if set(t_names) == set(s_names):
        return {n: n for n in s_names}
    if len(t_names) != len(s_names):
        raise BadInput(f"distill: the teacher's inputs {t_names} do not match the student's {s_names}")
    return dict(zip(s_names, t_names))


def with_outputs(model: ir.Model, names: list[str], which: str) -> ir.Model:
    """A copy of ``model`` that also outputs the tensors ``names`` (for hints)."""
    if not names:
        return model
    model = graph.copy(model)
    values = {v.name: v for node in model.graph for v in node.outputs}
    values.update({v.name: v for v in model.graph.inputs})
    outputs = {v.name for v in model.graph.outputs}
    for name in names:
        if name not in values:
            close = sorted(n for n in values if name.lower() in n.lower())[:5]
            raise BadInput(f"distill: hint tensor {name!r} is not in the {which}"
                           + (f" (similar: {', '.join(close)})" if close else ""))
        if name not in outputs:
            model.graph.outputs.append(values[name])
    return model


class Teacher:
    """Runs the teacher on batches of student-named inputs; outputs then hint tensors."""

    def __init__(self, model: ir.Model, mapping: dict[str, str], wanted: list[str], providers: list[str],
                 threads: int | None, device: str) -> None:
        self.mapping = mapping
        self.wanted = wanted  # output names, in order: the graph outputs, then the hints
        self.device = device
        self._model = model
        # No spinning: the session's idle threads would otherwise compete with training for the cores.
        self._session = evaluate.session(model, providers, threads, spinning=False)
        self._module = None
        self._torch_error = None
        self.run = TeacherRun("onnxruntime")
        self.fixed_batch = fixed_batch_of(model)

    def _torch(self):
        if self._module is None and self._torch_error is None:
            from mcomp.torch_graph import to_torch

            try:
                self._module = to_torch(self._model).to(self.device).eval()
            except BadInput as exc:
                self._torch_error = str(exc)
        return self._module

    def _feeds(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self.mapping[k]: np.ascontiguousarray(v) for k, v in batch.items()}

    def _run_ort(self, batch) -> list[np.ndarray]:
        n, fixed = next(iter(batch.values())).shape[0], self.fixed_batch
        if fixed and n != fixed:  # the session runs its fixed batch only; the student's torch copy may run any
            chunks = []
            for start in range(0, n, fixed):
                index = np.minimum(np.arange(start, start + fixed), n - 1)  # the last chunk padded with its last
                outs = self._run_ort({k: v[index] for k, v in batch.items()})
                chunks.append([o[:min(fixed, n - start)] for o in outs])
            return [np.concatenate([c[k] for c in chunks]) for k in range(len(self.wanted))]
        outs = self._session.run(None, self._feeds(batch))
        names = [o.name for o in self._session.get_outputs()]
        by_name = dict(zip(names, outs))
        return [by_name[n] for n in self.wanted]

    def _run_torch(self, batch) -> list[np.ndarray]:
        import torch

        module = self._torch()
        if module is None:  # the torch copy refused the graph: onnxruntime runs the teacher
            raise BadInput(self._torch_error)
        with torch.no_grad():
            outs = module(**{k: torch.from_numpy(v).to(self.device) for k, v in self._feeds(batch).items()})
        by_name = dict(zip(module.output_names, outs))
        return [by_name[n].cpu().numpy() for n in self.wanted]

    def choose_backend(self, batch: dict[str, np.ndarray]) -> None:
        """Times both backends on ``batch`` (after a warm-up run each) and keeps the faster."""
        n = next(iter(batch.values())).shape[0] or 1
        timings = {}
        for name, fn in (("onnxruntime", self._run_ort), ("torch", self._run_torch)):
            try:
                fn(batch)
                start = time.perf_counter()
                for _ in range(3):
                    fn(batch)
                timings[name] = (time.perf_counter() - start) / (3 * n)
            # The torch copy may not support the graph (or this device); onnxruntime always runs.
            # A failure on the data is bad input; anything else is a bug and surfaces as one.
            except (RuntimeError, ValueError, IndexError, McompError, *evaluate.ort_errors()) as exc:
                if name == "onnxruntime":
                    raise BadInput(f"distill: the teacher fails on the data ({short(exc, 200)})") from None
                self.run.notes.append(f"teacher not run on torch: {short(exc, 160)}")
        self.run = TeacherRun(min(timings, key=timings.get), {k: round(v * 1e6, 2) for k, v in timings.items()},
                              self.run.notes)

    def follows_axis_0(self, samples: Samples) -> bool:
        """Whether every output (and hint tensor) gives one entry per example on axis 0, on a first
        batch: an LSTM's ``Y_h [layers, batch, hidden]`` does not. A batch the teacher fails on
        counts as following: the checks after this one say what is wrong."""
        sizes = [self.fixed_batch] if self.fixed_batch else [n for n in (2, 3) if n <= len(samples)]
        for n in sizes:  # two sizes: at one, a state [2, batch, 128] of 2 examples reads as following
            try:
                outs = self._run_ort(samples.batch(np.arange(n)))
            except (RuntimeError, ValueError, IndexError, *evaluate.ort_errors()):
                return True
            if not all(o.ndim > 0 and o.shape[0] == n for o in outs):
                return False
        return True

    def __call__(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._run_torch(batch) if self.run.backend == "torch" else self._run_ort(batch)

    def close(self) -> None:
        """Frees the session and the torch copy (their threads and memory) before training."""
        self._session = self._module = None

    def targets(self, samples: Samples, batch_size: int, progress=None) -> list[np.ndarray]:
        """The teacher's outputs for every example, in order."""
        n = len(samples)
        step = self.fixed_batch or batch_size
        chunks: list[list[np.ndarray]] = []
        for start in range(0, n, step):
            index = np.arange(start, min(start + step, n))
            real = len(index)
            chunks.append([out[:real] for out in self(samples.batch(runnable(index, self.fixed_batch, step)))])
            if progress is not None:
                progress("distill: teacher outputs", min(start + step, n), n)
        return [np.concatenate([c[k] for c in chunks], axis=0) for k in range(len(self.wanted))]


def fixed_batch_of(model: ir.Model) -> int | None:
    specs = session_io.input_specs(model)
    lead = specs[0].shape[0] if specs and specs[0].shape else None
    return lead if isinstance(lead, int) else None
