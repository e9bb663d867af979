"""Pass commands are generated from the pass's Config (design §5): the YAML and the CLI cannot drift,
and a third-party pass declared through the ``mcomp.passes`` entry point gets its command."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer

from clirun import DIGITS, run_shell
from mcomp import registry
from mcomp.cli.generate import option_names
from mcomp.cli.main import app, command_spec

PLUGIN = '''
"""A third-party pass: zero the weights whose magnitude is below a threshold."""
from typing import ClassVar, Literal

import numpy as np
import onnx_ir as ir
from pydantic import Field

from mcomp.pass_base import Pass, PassConfig, PassResult


class ZeroSmall(Pass):
    """Zero every float weight whose magnitude is below --threshold."""

    name: ClassVar[str] = "zero-small"
    summary: ClassVar[str] = "zero small weights"

    class Config(PassConfig):
        threshold: float = Field(1e-2, gt=0, description="weights below this magnitude become 0")
        scale: Literal["absolute", "relative"] = Field("absolute", description="threshold per tensor or of its max")
        skip: list[str] = Field(default_factory=list, description="initializers left alone")

    def call(self, model, ctx):
        zeroed = 0
        for name, value in model.graph.initializers.items():
            if name in self.config.skip or value.const_value is None:
                continue
            array = value.const_value.numpy()
            if array.dtype != np.float32:
                continue
            limit = self.config.threshold * (np.abs(array).max() if self.config.scale == "relative" else 1.0)
            small = np.abs(array) < limit
            zeroed += int(small.sum())
            value.const_value = ir.tensor(np.where(small, 0, array).astype(np.float32), name=name)
        return PassResult(model, zeroed > 0, f"{zeroed} weights zeroed", [], {"zeroed": zeroed})
'''


def _click_command(name: str):
    group = typer.main.get_command(app)
    return group.get_command(None, name)


@pytest.mark.parametrize("name", registry.names())
def test_every_pass_command_takes_its_config_fields_and_the_shared_options(name):
    command = _click_command(name)
    options = {p.name for p in command.params if p.param_type_name == "option"}
    assert options == option_names(registry.get(name), command_spec(name))
    assert set(registry.get(name).Config.model_fields) <= options


@pytest.mark.parametrize("name", registry.names())
def test_choices_and_defaults_come_from_the_config(name):
    config = registry.get(name).Config
    command = _click_command(name)
    by_name = {p.name: p for p in command.params}
    for field, info in config.model_fields.items():
        param = by_name[field]
        literal = typing_choices(info.annotation)
        if literal:
            assert set(typing_choices(param.type_descriptor.annotation)) == set(literal), field
        default = info.get_default(call_default_factory=True)
        if not isinstance(default, (list, dict)):
            assert param.default == default, (field, param.default, default)


def typing_choices(annotation):
    import typing

    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return typing.get_args(candidate)
    return ()


def test_yaml_only_options_are_on_the_command_line_now():
    assert {"monitor"} <= {p.name for p in _click_command("distill").params}
    assert {"max_iterations", "check_feeds"} <= {p.name for p in _click_command("optimize").params}
    assert {"calibration_feeds"} <= {p.name for p in _click_command("quantize").params}


def test_skip_help_names_every_optimize_stage():
    from mcomp.passes.optimize.stages import PORTABLE_STAGES

    help_text = {p.name: p.help for p in _click_command("optimize").params}["skip"]
    for stage in [s.name for s in PORTABLE_STAGES] + ["onnxruntime"]:
        assert stage in help_text


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """The plugin package, installed with pip into a folder of its own (PYTHONPATH makes it visible)."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    (source / "zero_small").mkdir(parents=True)
    (source / "zero_small" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (source / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "zero-small"
        version = "0.1"
        [project.entry-points."mcomp.passes"]
        zero-small = "zero_small:ZeroSmall"
        [tool.setuptools]
        packages = ["zero_small"]
        '''))
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    return target


def test_a_third_party_pass_gets_its_command_with_no_code_in_cli(plugin_path, tmp_path):
    env = f"export PYTHONPATH={plugin_path};"
    listed = run_shell(f"{env} mcomp --help", cwd=tmp_path)
    assert listed.returncode == 0 and "zero-small" in listed.out, listed.explain()
    helped = run_shell(f"{env} mcomp zero-small --help", cwd=tmp_path)
    text = helped.out
    assert helped.returncode == 0 and "--threshold" in text and "absolute|relative" in text and "--skip" in text, \
        helped.explain()
    assert "--data" in text and "--report" in text and "--debug" in text
    ran = run_shell(f"{env} mcomp zero-small {DIGITS} --threshold 0.05 --scale relative -o z.onnx --runs 3 --json",
                    cwd=tmp_path)
    assert ran.returncode == 0, ran.explain()
    step = json.loads(ran.out)["steps"][0]
    assert step["pass"] == "zero-small" and step["modified"] and step["changes"]["zeroed"] > 0
    assert step["options"] == {"threshold": 0.05, "scale": "relative", "skip": []}
    assert step["summary"].endswith("weights zeroed") and (tmp_path / "z.onnx").exists()
    bad = run_shell(f"{env} mcomp zero-small {DIGITS} --threshold -1 -o y.onnx", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "threshold" in bad.stderr, bad.explain()
    assert not (tmp_path / "y.onnx").exists()
