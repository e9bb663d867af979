"""Pipeline files (design §4): YAML validated by pydantic against the registered passes' configs.

Errors name the file, the line, the offending key and the valid choices, e.g.
``pipe.yaml:7: steps[0].prune: unknown option 'rat' (valid: method, rate)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcomp import registry
from mcomp.data_spec import ImageFolderSpec
from mcomp.errors import ConfigError
from mcomp.pass_base import PassConfig

BUILTIN_PREFIX = "builtin:"
# A pipeline or space file is a page of settings; anything bigger is refused before it is parsed.
MAX_YAML_BYTES = 1 << 20
# Values in one, an alias counted each time it is used: a thousand times a real pipeline's, and few
# enough to validate in a blink (a "billion laughs" of nested aliases would otherwise expand forever).
MAX_YAML_NODES = 100_000
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DataRoles(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    calibration: str | ImageFolderSpec | None = None
    evaluation: str | ImageFolderSpec | None = None
    training: str | ImageFolderSpec | None = None


class Gate(BaseModel):
    """Quality gates: exceeding one fails the run with exit 3 and writes no output."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="accuracy points as a fraction (0.01 = 1 point)")
    min_fidelity: float | None = Field(None, ge=-1, le=1, description="lowest cosine similarity of any output slice, "
                                       "or centered or residual cosine where lower (of any whole output with "
                                       "measure.fidelity: whole)")
    min_speedup: float | None = Field(None, gt=0, description="reference latency / candidate latency")


class Measure(BaseModel):
    """How the final model is measured against the input."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    latency: bool = True
    runs: int = Field(30, ge=3, le=100000)
    warmup: int = Field(3, ge=0, le=10000)
    fidelity: Literal["slice", "whole"] = Field(
        "slice", description="what fidelity checks and gates compare: the worst slice along each output's "
                             "channel-like axes (a detector's class rows), or whole flattened outputs")
    metric: str | None = Field(None, description="file.py:function (relative to the pipeline file) or "
                                                 "module:function scoring outputs against labels, higher is better, "
                                                 "in place of top-1 accuracy (mcomp.metric)")


class Step(BaseModel):
    name: str
    config: PassConfig
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    model: str | None = None
    data: DataRoles = DataRoles()
    input_shape: dict[str, list[int]] | None = None
    provider: str = Field("auto", pattern="^(cpu|cuda|auto)$")
    threads: int | None = Field(None, ge=1)
    seed: int = 0
    steps: list[Step] = Field(min_length=1)
    gate: Gate = Gate()
    measure: Measure = Measure()
    output: str | None = None
    report: str | None = None
    report_html: str | None = None  # also the report as an HTML page; relative to the file, like report
    base_dir: Path = Path(".")

    def resolve(self, path: str | None) -> str | None:
        """Paths in a pipeline file are relative to the file's folder; builtin: names to package assets."""
        if path is None or path in ("-", "random"):
            return path
        if path.startswith(BUILTIN_PREFIX):
            return builtin(path)
        p = Path(path).expanduser()
        return os.path.normpath(p if p.is_absolute() else self.base_dir / p)


def builtin(path: str) -> str:
    """A packaged asset for ``builtin:NAME`` (also on the command line); any other path as given."""
    if path.startswith(BUILTIN_PREFIX):
        from mcomp.embedded import builtin_path

        return str(builtin_path(path[len(BUILTIN_PREFIX):]))
    return path


def parse_step(name: str, options: dict | None) -> Step:
    """A step from a pass name and its options; raises ConfigError / pydantic ValidationError."""
    cls = registry.get(name)
    return Step(name=name, config=cls.Config(**(options or {})))


def load_file(path: str | Path) -> Pipeline:
    path = Path(path)
    raw, root = read_yaml(path, "pipeline file")
    return _from_yaml(raw, root, str(path), path.parent)


def load_text(text: str, where: str, base_dir: Path = Path(".")) -> Pipeline:
    raw, root = parse_yaml(text, where)
    return _from_yaml(raw, root, where, base_dir)


def read_yaml(path: Path, what: str) -> tuple[Any, Any]:
    """A settings file's data and its node tree (for line numbers). Refused unread past
    ``MAX_YAML_BYTES``: a settings file is a page, and a 10 MB one (a mistake or an attack) would
    otherwise take minutes to parse before any message."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        with open(path, "rb") as fh:  # a bounded read: the size on disk may lie (/proc) or grow while read
            data = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > MAX_YAML_BYTES:
        size = max(path.stat().st_size, len(data))
        raise ConfigError(f"{path}: {size:,} bytes is too big for a {what} (at most {MAX_YAML_BYTES:,} bytes)")
    return parse_yaml(data.decode("utf-8", errors="replace"), str(path))


def parse_yaml(text: str, where: str) -> tuple[Any, Any]:
    """One parse (libyaml's when installed, ~20x faster than pure Python) gives both the node tree
    and the data built from it; aliases that would expand past ``MAX_YAML_NODES`` are refused, so
    the cost of what follows (validation walks the data) stays linear in the file."""
    loader = _LOADER(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_expansion(root, where)
        raw = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{where}{line}: not valid YAML ({problem})") from None
    finally:
        loader.dispose()
    return raw, root


def _check_expansion(root, where: str) -> None:
    """Counts the nodes as the data will hold them (an alias counted each time it is used), stopping at the cap."""
    seen, stack = 0, [root]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_YAML_NODES:
            raise ConfigError(f"{where}: more than {MAX_YAML_NODES:,} values (an alias counted each time it is used)")
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)


def _from_yaml(raw, root, where: str, base_dir: Path) -> Pipeline:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}:1: a pipeline is a mapping with at least 'steps'")
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigError(f"{where}:{_line(root, ('steps',))}: 'steps' must be a non-empty list of {{pass: options}}")
    steps = []
    for i, item in enumerate(raw_steps):
        line = _line(root, ("steps", i))
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"{where}:{line}: steps[{i}] must be one {{pass: options}} mapping; passes: {', '.join(registry.names())}")
        (name, options), = item.items()
        if name not in registry.names():
            raise ConfigError(f"{where}:{line}: steps[{i}]: unknown pass {name!r} (valid: {', '.join(registry.names())})")
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"{where}:{line}: steps[{i}].{name}: options must be a mapping")
        try:
            step = parse_step(name, options)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, where, root, ("steps", i, name), registry.get(name).Config)) from None
        steps.append(_relative_to(step, base_dir))
    body = {k: v for k, v in raw.items() if k != "steps"}
    try:
        return Pipeline(**body, steps=steps, base_dir=base_dir)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, where, root, (), Pipeline)) from None


def _relative_to(step: Step, base_dir: Path) -> Step:
    """The step with its file options (``Config.path_fields``) resolved against the pipeline's folder."""
    updates = {}
    for name in step.config.path_fields:
        value = getattr(step.config, name, None)
        if isinstance(value, str) and value not in ("-", "random") and not Path(value).expanduser().is_absolute():
            updates[name] = os.path.normpath(base_dir / Path(value).expanduser())
    return Step(name=step.name, config=step.config.model_copy(update=updates)) if updates else step


def _explain(exc: ValidationError, where: str, root, prefix: tuple, model_cls) -> str:
    """One line for the first error: file:line: dotted.key: message (valid choices)."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    full = prefix + loc
    key = _dotted(full)
    line = _line(root, full)
    if err["type"] == "extra_forbidden":
        valid = _fields_at(model_cls, loc[:-1])
        return f"{where}:{line}: {key}: unknown option {loc[-1]!r} (valid: {', '.join(valid)})"
    given = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], (dict, list)) else ""
    return f"{where}:{line}: {key}: {err['msg']}{given}"


def _fields_at(model_cls, loc: tuple) -> list[str]:
    cls = model_cls
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) and hasattr(cls, "model_fields") else None
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            cls = annotation
    return [n for n in cls.model_fields if n != "base_dir"]


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line(root, loc: tuple) -> int:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    node, best = root, (root.start_mark.line + 1 if root is not None else 1)
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    best = k.start_mark.line + 1
                    child = v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            best = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return best


def single_step(name: str, options: dict[str, Any]) -> Step:
    """A step for a single-pass command; option errors read like the CLI's."""
    try:
        return parse_step(name, options)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
        raise ConfigError(f"{name}: {key}: {err['msg']}") from None
