"""The Pass protocol (design §3).

A pass is built with its config and called on a model; ``__call__`` is the only entry
point: it checks that the context holds what the config needs (``requires``), times the call,
and checks the result. A pass never prints: it returns a ``PassResult`` with typed fields —
a one-line ``summary``, ``notes`` for people, ``details`` for the report — so that core and
the CLI never read a pass's own keys.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from mcomp.errors import BadInput, McompError

if TYPE_CHECKING:  # the graph library is imported where a pass runs, not where its command's help is built
    import onnx_ir as ir


class PassConfig(BaseModel):
    """Base for pass options: unknown keys are errors, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Options that name files: in a pipeline file they are relative to the file's folder.
    path_fields: ClassVar[tuple[str, ...]] = ()


@dataclass
class PassResult:
    """What a pass did. ``modified`` is true only when the model changed; ``details`` is the pass's
    own record (any JSON-able dict, documented by the pass), copied into the report's step as is."""

    model: ir.Model
    modified: bool
    summary: str = ""
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None  # set by Pass.__call__


@dataclass(frozen=True)
class Need:
    """Data a pass's config cannot do without: any one of ``roles`` present satisfies it."""

    roles: tuple[str, ...]
    why: str  # "static quantization calibrates activation ranges on it"


ANY_DATA = ("training", "calibration", "evaluation")


@dataclass
class Context:
    """What a pass may need beyond the model.

    ``reference`` is the pipeline's input model, shared: a pass reads it and never changes it.
    ``data`` maps a role (``calibration``, ``evaluation``, ``training``) to a loaded Dataset;
    ``reference`` is the pipeline's input model; ``progress(description, done, total)``
    reports progress without printing.
    """

    reference: ir.Model | None = None
    data: dict[str, Any] = field(default_factory=dict)
    provider: str = "auto"
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int | None = None
    seed: int = 0
    input_shapes: dict[str, tuple[int, ...]] | None = None
    fidelity: str = "slice"  # what fidelity checks compare: the worst slice of each output, or whole outputs
    progress: Callable[[str, int, int], None] = lambda description, done, total: None
    # Called by a training pass after each epoch with its history row (epoch, loss, val_loss, …).
    # A search stops a trial that is clearly worse by raising from it; None outside a search.
    on_epoch: Callable[[dict], None] | None = None
    # The user's task metric (``mcomp.metric.Metric``, from --metric or measure.metric): a pass that bounds
    # an accuracy drop reads accuracy with it, in place of top-1, as the report and the gates do.
    metric: Callable | None = None

    def dataset(self, *roles: str):
        """The first data set present among ``roles`` (e.g. evaluation, then calibration)."""
        for role in roles:
            if self.data.get(role) is not None:
                return self.data[role]
        return None


class PassError(McompError):
    """A pass failed; the message names the pass."""


class Pass(abc.ABC):
    """Subclasses set ``name``, ``needs`` and ``Config``, and write ``call``."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    # What the pass may ask of the Context, for `mcomp passes`; a trailing "?" marks it optional.
    # What this config cannot do without is ``requires()``.
    needs: ClassVar[frozenset[str]] = frozenset()
    Config: ClassVar[type[PassConfig]] = PassConfig
    # True: ``call`` changes the model it is given, so the pipeline hands it a copy when the
    # model is shared (the input, which the report measures against). False: it returns a new one.
    in_place: ClassVar[bool] = True
    # True: a check inside the pass compares outputs with the input (quantize's budget, optimize's
    # stage check), so its command takes --fidelity slice|whole.
    checks_fidelity: ClassVar[bool] = False

    def __init__(self, config: PassConfig | None = None, **options: Any) -> None:
        if config is None:
            config = self.Config(**options)
        elif options:
            raise TypeError("give a config or options, not both")
        if not isinstance(config, self.Config):
            raise TypeError(f"{self.name}: expected {self.Config.__name__}, got {type(config).__name__}")
        self.config = config

    @abc.abstractmethod
    def call(self, model: ir.Model, ctx: Context) -> PassResult:
        """Transforms ``model`` (in place or into a new one) and says what changed."""

    def requires(self) -> tuple[Need, ...]:
        """The data this config cannot run without. The default follows ``needs``: a required
        ``data`` entry is satisfied by any role; passes whose needs depend on options override it."""
        if "data" in self.needs:
            return (Need(ANY_DATA, "it reads data"),)
        return ()

    def idle_on_input(self, source: Any = None) -> str | None:
        """Why this pass, with these options, has nothing to do on the pipeline's input as it came
        (None: it has). The pipeline then skips it, with the reason in the report. ``source``: where
        that input was read from (``model.ModelSource``: path, sha256), for a pass that compares files."""
        return None

    def missing(self, roles) -> list[Need]:
        """The needs that none of the data ``roles`` present satisfies."""
        present = {role for role in roles}
        return [need for need in self.requires() if not present.intersection(need.roles)]

    def __call__(self, model: ir.Model, ctx: Context | None = None) -> PassResult:
        import onnx_ir as ir

        ctx = ctx or Context()
        for need in self.missing(role for role, ds in ctx.data.items() if ds is not None):
            raise BadInput(f"{self.name}: needs data: {need.why} (--data PATH)")
        start = time.perf_counter()
        result = self.call(model, ctx)
        if not isinstance(result, PassResult) or not isinstance(result.model, ir.Model):
            raise PassError(f"{self.name}: returned {type(result).__name__}, expected a PassResult with a model")
        result.seconds = round(time.perf_counter() - start, 3)
        return result

    def options(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")
