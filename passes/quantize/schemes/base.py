"""What every quantization mode declares, and the registry that maps ``--mode`` to it.

The flow (``quantize.flow``) is the same for every mode: prepare → full candidate → accuracy
budget → latency guard. A ``Scheme`` says what differs: whether it calibrates (the pass then
needs data), which ``--bits`` it takes, its objective (``latency``: the guard measures what pays;
``size``: same graph and ops, latency unchanged by construction), the nodes or layers it would
quantize (``units``) and how to build a candidate with some of them left in float.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable

import onnx
import onnx_ir as ir

from mcomp.passes.quantize.target import COMPUTE_OPS

REGISTRY: dict[str, type["Scheme"]] = {}


def register(name: str):
    """Class decorator: ``--mode name`` builds this scheme."""
    def add(cls: type[Scheme]) -> type[Scheme]:
        if name in REGISTRY:
            raise ValueError(f"quantize: two schemes registered as {name!r}")
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return add


class Unchanged(Exception):
    """The input is returned as it is; the message says why."""


@dataclass
class Unit:
    """One node (or weight) a scheme would quantize, the grain at which it can stay float."""

    name: str
    op_type: str
    params: int  # elements of its float weight initializers
    macs: int | None = None
    depthwise: bool = False

    @property
    def compute(self) -> bool:
        return self.op_type in COMPUTE_OPS


class Scheme(abc.ABC):
    """One quantization mode over one model. Built by the flow, which calls ``setup``, then
    ``build`` for each candidate, then ``result`` and ``outcome`` for the one it keeps."""

    name: ClassVar[str] = ""  # set by @register
    calibrates: ClassVar[str] = ""  # why it needs calibration data ("" = it needs none): the pass's Need
    objective: ClassVar[str] = "latency"  # "latency": the guard measures what pays; "size": latency unchanged
    bits: ClassVar[tuple[int, ...]] = ()  # the --bits it accepts; () = its width is fixed
    default_bits: ClassVar[int | None] = None
    guard_groups: ClassVar[bool] = True  # the latency guard tries node groups, or only the whole candidate
    slowdown_bounded: ClassVar[bool] = False  # objective size, other kernels: the guard bounds the slowdown
    setting: tuple = ()  # what a candidate depends on besides its float nodes (weight-only: block, accuracy level)
    composes: bool = False  # candidates are composed cheaply per call (the flow then holds none of them)

    def __init__(self, cfg, ctx, target, workdir: Path, notes: list[str], details: dict[str, Any]):
        self.cfg, self.ctx, self.target, self.workdir = cfg, ctx, target, workdir
        self.notes, self.details = notes, details  # the run's, shared with the flow
        self.units: list[Unit] = []
        self.user: set[str] = set()  # units the user excluded (--exclude)
        self.label = self.name
        self.builds = 0

    @abc.abstractmethod
    def setup(self, model: ir.Model, calibration) -> None:
        """Prepares ``model`` and lists ``units``; what it finds goes to ``details`` and ``notes``."""

    @abc.abstractmethod
    def build(self, exclude: Iterable[str] = (), only: Iterable[str] | None = None) -> onnx.ModelProto:
        """A candidate with ``exclude`` left in float; or with only the units in ``only`` quantized."""

    @abc.abstractmethod
    def groups(self, live: list[Unit]) -> list:
        """``sensitivity.Group``s of the live units: what the budget sends back to float together."""

    @abc.abstractmethod
    def result(self, proto: onnx.ModelProto, excluded: set[str]) -> ir.Model:
        """The model to return, given the kept candidate (``proto``, built with ``excluded`` in float)."""

    @abc.abstractmethod
    def outcome(self, model: ir.Model, result: ir.Model, excluded: set[str], score, evaluator, verdict) -> str:
        """Records what was done in ``details`` and returns the one-line summary."""

    def layer_errors(self, live: list[Unit], feeds) -> list | None:
        """Per-layer errors for --explain; None where the scheme cannot expose them."""
        return None

    def unmet(self, budget) -> Exception:
        """What the flow raises when the budget holds only with every unit in float."""
        self.notes.append(f"the budget ({budget.describe()}) holds only with every layer in float")
        return Unchanged("budget met only in float")

    def discard(self) -> None:
        """The input is returned: undo what ``build`` changed in place (nothing, for most schemes)."""
