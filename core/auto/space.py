"""The search space of ``mcomp auto``: which passes a trial may use, in which order, and the
ranges and choices of their options.

A space file is YAML, validated against the registered passes' configs like a pipeline file
(errors give ``file:line``). Each pass under ``steps`` (in the order the trials run them) maps
its options to a fixed value, a list of choices, or a range::

    steps:
      prune:
        enabled: [true, false]            # the step itself may be left out
        method: structured                # fixed
        rate: {low: 0.2, high: 0.8}       # uniform; {log: true} for a log scale, {step: 0.1} for a grid
        importance: [l1, bn]              # choices
        allocation: {choices: [uniform, sensitivity], when: {method: structured}}   # only for that method
      distill:
        epochs: {low: 5, high: 30, step: 5}
        lr: [null, 0.003, 0.01]           # null: the pass's own default (here an LR range test)
      quantize: {mode: [static, dynamic], enabled: [true, false]}
      optimize: {level: basic}

Any registered pass may be named, a third-party one too: its options are whatever its Config
declares. A trial's sampled values are checked by that Config, so a combination the pass rejects
is a failed trial with the pass's reason, not a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcomp import registry
from mcomp.errors import ConfigError
from mcomp.pipeline_spec import _line, read_yaml

ENABLED = "enabled"  # the reserved option that says whether a step is part of the trial


@dataclass(frozen=True)
class Param:
    """One option of one pass: fixed (``value``), a choice among ``choices``, or a number in [low, high]."""

    pass_name: str
    option: str
    value: Any = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    when: tuple = ()  # ((option, (values…)), …): sampled only when this pass's earlier options hold these

    def applies(self, chosen: dict) -> bool:
        return all(chosen.get(option) in values for option, values in self.when)

    @property
    def name(self) -> str:  # the parameter's name in the study
        return f"{self.pass_name}.{self.option}"

    @property
    def searched(self) -> bool:
        return self.choices is not None or self.low is not None

    def sample(self, trial) -> Any:
        if self.choices is not None:
            if any(isinstance(c, tuple) for c in self.choices):  # optuna's choices are scalars: lists go as JSON
                return json.loads(trial.suggest_categorical(self.name, [json.dumps(_plain(c)) for c in self.choices]))
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.low is None:
            return self.value
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        value = trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return round(value, 10) if self.step else value  # 0.30000000000000004 → 0.3 in saved pipelines

    def describe(self) -> str:
        if self.choices is not None:
            text = "|".join("default" if c is None else json.dumps(_plain(c)) if isinstance(c, tuple) else str(c)
                            for c in self.choices)
        elif self.low is not None:
            text = f"{self.low}..{self.high}" + (" log" if self.log else "") + (f" step {self.step}" if self.step else "")
        else:
            text = str(self.value)
        if self.when:
            text += " (when " + ", ".join(f"{k}={'|'.join(map(str, v))}" for k, v in self.when) + ")"
        return text


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@dataclass
class Space:
    steps: list[tuple[str, list[Param]]] = field(default_factory=list)
    where: str = "default space"

    def sample(self, trial) -> list[tuple[str, dict]]:
        """The trial's pipeline steps as (pass, options); a step whose ``enabled`` came out false is left out."""
        chosen = []
        for pass_name, params in self.steps:
            enabled = next((p for p in params if p.option == ENABLED), None)
            if enabled is not None and not enabled.sample(trial):
                continue
            options = {}
            for p in params:
                if p.option != ENABLED and p.applies(options):
                    options[p.option] = p.sample(trial)
            chosen.append((pass_name, {k: v for k, v in options.items() if v is not None}))
        return chosen

    def describe(self) -> list[str]:
        return [f"{name}: " + ", ".join(f"{p.option}={p.describe()}" for p in params) for name, params in self.steps]


# The default space: structured pruning (merge included) with its rate, criterion, allocation and
# channel multiple;
# distillation against the input to win the accuracy back; int8 or float; graph optimization.
# Ranges are wide on purpose: the search, not a guess made on one model, narrows them; only what lost
# everywhere it was tried (benchmarks/auto.py: lr 0.003, T 1, 5 epochs, rates below 0.3 that remove
# too little to pay for the distillation) is left out.
DEFAULT = {
    "prune": {ENABLED: [True, False], "method": ["structured", "merge"],
              "rate": {"low": 0.3, "high": 0.8, "step": 0.05},
              "importance": {"choices": ["l1", "l2", "bn", "taylor"], "when": {"method": "structured"}},
              "allocation": {"choices": ["uniform", "sensitivity"], "when": {"method": "structured"}},
              "allocation_cost": {"choices": ["macs", "latency"], "when": {"allocation": "sensitivity"}},
              # onnxruntime's CPU kernels block channels by 8 (AVX2) or 16 (AVX-512, NCHWc): on an
              # AVX-512 machine the MNIST CNN cut 70 % ran ×0.66 of the input at round_to 16, ×0.73 at 8
              "round_to": [8, 16]},
    "distill": {ENABLED: [True, False], "epochs": {"low": 10, "high": 20, "step": 5},
                "lr": [None, 0.01, 0.03], "temperature": [2.0, 4.0, 8.0],
                "alpha": {"low": 0.0, "high": 0.7, "step": 0.05}, "hints": [["auto"], []]},
    "quantize": {ENABLED: [True, False], "mode": ["static", "dynamic"],
                 "calibration": {"choices": ["minmax", "percentile", "entropy"], "when": {"mode": "static"}}},
    "optimize": {"level": ["basic", "extended", "all"]},
}


def default_space() -> Space:
    """The default space, less the options a pass here does not declare (an older prune without
    ``allocation``, say): the default must always load."""
    raw = {name: {k: v for k, v in opts.items() if k == ENABLED or k in registry.get(name).Config.model_fields}
           for name, opts in DEFAULT.items() if name in registry.names()}
    return _build(raw, "default space", None)


def load_space(path: str | Path) -> Space:
    path = Path(path)
    raw, root = read_yaml(path, "space file")  # capped in size, parsed once
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), dict) or not raw["steps"]:
        raise ConfigError(f"{path}:1: a space file is a mapping with 'steps': {{pass: {{option: value|[choices]|{{low, high}}}}}}")
    unknown = sorted(set(raw) - {"steps"})
    if unknown:
        raise ConfigError(f"{path}:{_line(root, (unknown[0],))}: unknown key {unknown[0]!r} (valid: steps)")
    return _build(raw["steps"], str(path), root)


def _build(steps: dict, where: str, root) -> Space:
    space = Space(where=where)
    for pass_name, options in steps.items():
        line = f"{where}:{_line(root, ('steps', pass_name))}" if root is not None else where
        if pass_name not in registry.names():
            raise ConfigError(f"{line}: unknown pass {pass_name!r} (valid: {', '.join(registry.names())})")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ConfigError(f"{line}: steps.{pass_name}: options must be a mapping")
        config = registry.get(pass_name).Config
        params = []
        for option, spec in options.items():
            at = f"{where}:{_line(root, ('steps', pass_name, option))}" if root is not None else where
            if option != ENABLED and option not in config.model_fields:
                valid = ", ".join([ENABLED, *config.model_fields])
                raise ConfigError(f"{at}: steps.{pass_name}: unknown option {option!r} (valid: {valid})")
            params.append(_param(pass_name, option, spec, at))
            _check_values(pass_name, config, params[-1], at)
            earlier = {p.option for p in params[:-1]}
            for name, _ in params[-1].when:
                if name not in earlier:
                    raise ConfigError(f"{at}: steps.{pass_name}.{option}: when: {name!r} is not an option listed "
                                      f"before it (listed: {', '.join(sorted(earlier)) or 'none'})")
        space.steps.append((pass_name, params))
    return space


def _param(pass_name: str, option: str, spec, at: str) -> Param:
    key = f"steps.{pass_name}.{option}"
    when = ()
    if isinstance(spec, dict) and "when" in spec:
        spec = dict(spec)
        cond = spec.pop("when")
        if not isinstance(cond, dict) or not cond:
            raise ConfigError(f"{at}: {key}: when is a mapping of this pass's options to a value or a list of values")
        when = tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in cond.items())
        if set(spec) == {"choices"}:
            spec = spec["choices"]
        elif set(spec) == {"value"}:
            spec = spec["value"]
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{at}: {key}: an empty list of choices")
        return Param(pass_name, option, choices=tuple(tuple(c) if isinstance(c, list) else c for c in spec), when=when)
    if isinstance(spec, dict):
        extra = sorted(set(spec) - {"low", "high", "log", "step"})
        if extra or "low" not in spec or "high" not in spec:
            raise ConfigError(f"{at}: {key}: a range is {{low: X, high: Y}} with optional log: true or step: S, "
                              "choices are a list (or {choices: [...], when: {...}})"
                              + (f" (unknown: {', '.join(extra)})" if extra else ""))
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
            raise ConfigError(f"{at}: {key}: low and high must be numbers with low <= high (got {low!r}, {high!r})")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise ConfigError(f"{at}: {key}: a log range needs low > 0 (got {low})")
        step = spec.get("step")
        integer = all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int))
        return Param(pass_name, option, low=low, high=high, log=log, step=step, integer=integer, when=when)
    return Param(pass_name, option, value=spec, when=when)


def _check_values(pass_name: str, config, p: Param, at: str) -> None:
    """Each value a param can take is checked by the pass's Config, alone, so a typo in a choice is
    an error now, not a failed trial in an hour (combinations are checked per trial)."""
    from pydantic import ValidationError

    if p.option == ENABLED:
        values = p.choices if p.choices is not None else (p.value,)
        if any(not isinstance(v, bool) for v in values):
            raise ConfigError(f"{at}: steps.{pass_name}.{ENABLED}: true, false or [true, false]")
        return
    values = p.choices if p.choices is not None else ((p.low, p.high) if p.low is not None else (p.value,))
    for value in values:
        if value is None:
            continue
        try:
            config(**{p.option: _plain(value)})
        except ValidationError as exc:
            err = next((e for e in exc.errors() if tuple(e["loc"][:1]) == (p.option,)), None)
            if err is not None:
                raise ConfigError(f"{at}: steps.{pass_name}.{p.option}: {value!r}: {err['msg']}") from None
