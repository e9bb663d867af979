"""The bad-input corpus (``tests/corpus/make.py``), one table-driven test over every command each
case applies to: the exit code, exactly one stderr line ("error: …") matching the case's regex,
no traceback, nothing written in the folder, the inputs unchanged (design §5, issue 12).

The single-command cases of ``tests/test_bad_inputs.py`` stay there; ``test_every_command_is_covered``
makes a new command fail here until the corpus says how it is run (or why it is exempt), so it is
checked against every case that applies. The runs start together when the module starts (``clirun``).
"""

from __future__ import annotations

import functools
import re
import sys

import numpy as np
import pytest

from clirun import Batch, Result, run_mcomp, selected_keys, snapshot, uses
from corpus import make

EXEMPT = {"export": "takes a PyTorch checkpoint, not an ONNX model or data (tests/test_torch_io.py)",
          "passes": "takes no model, data or provider"}


def _run(argv: list[str], folder, before: dict[str, str]) -> Result:
    res = run_mcomp(*argv, cwd=folder)
    res.before, res.after = before, snapshot(folder)
    return res


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    def prepare(key: str):
        name, command = key.split("::")
        folder = tmp_path_factory.mktemp(re.sub(r"\W+", "_", key))
        make.write(make.BY_NAME[name], folder)  # in the main thread; the run itself in the pool
        return functools.partial(_run, make.BY_NAME[name].argv(command), folder, snapshot(folder))

    batch = Batch(prepare, selected_keys(request, sys.modules[__name__]))
    yield batch
    batch.close()


@pytest.mark.parametrize("case,command", [pytest.param(case, command, marks=[pytest.mark.slow] if slow else [])
                                          for case, command, slow in make.params()])
@uses("{case}::{command}")
def test_bad_input_is_refused_in_one_line(runs, case, command):
    res, spec = runs[f"{case}::{command}"], make.BY_NAME[case]
    why = res.explain()
    assert res.returncode == spec.code, why
    assert "Traceback" not in res.stderr, why
    assert len(res.err_lines) == 1, f"stderr must be exactly one line{why}"
    line = res.err_lines[0]
    assert line.startswith("error: ") and "internal error" not in line, why
    assert re.search(spec.message, line), f"{spec.message!r} not in the error line{why}"
    new = sorted(set(res.after) - set(res.before))
    changed = sorted(k for k in res.before if res.after.get(k) != res.before[k])
    assert not new and not changed, f"written: {new}, changed or removed: {changed}{why}"


def _commands() -> dict[str, set[str]]:
    """Every command of the CLI (the pass commands too) → the names of its options."""
    import typer

    from mcomp.cli.main import app

    group = typer.main.get_command(app)
    ctx = group.make_context("mcomp", ["passes"], resilient_parsing=True)
    return {name: {p.name for p in group.get_command(ctx, name).params} for name in group.list_commands(ctx)}


def test_every_command_is_covered():
    """A command the corpus does not run is checked against none of it: say how it runs, or why not."""
    commands = _commands()
    run_as = {c.split("-")[0] for c in make.COMMANDS}
    assert set(commands) - set(EXEMPT) <= run_as, sorted(set(commands) - set(EXEMPT) - run_as)
    used = {command for case in make.CASES for command in case.commands}
    assert set(make.COMMANDS) <= used, sorted(set(make.COMMANDS) - used)
    takes_provider = {name for name, params in commands.items() if "provider" in params}
    provider_case = {c.split("-")[0] for c in make.BY_NAME["provider-unknown"].commands}
    assert takes_provider <= provider_case, sorted(takes_provider - provider_case)


def test_the_corpus_is_small():
    """Generated, not stored: the corpus folder holds code, well under 1 MB (the repository stays small)."""
    folder = make.Path(make.__file__).parent
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 1 << 20, total


# --------------------------------------------------------------------------- the checks themselves, in-process


def test_data_checks_name_the_first_bad_index():
    from mcomp.data_checks import check_array
    from mcomp.errors import BadInput

    array = np.zeros((2, 3), np.float32)
    array[1, 2], array[1, 1] = -np.inf, np.nan
    with pytest.raises(BadInput, match=r"'x' holds NaN at index \[1, 1\] \(2 non-finite values"):
        check_array(array, "x", "d.npz")
    with pytest.raises(BadInput, match=r"'x' is empty \(shape \(0, 3\)\)"):
        check_array(np.zeros((0, 3), np.float32), "x", "d.npz")
    check_array(np.arange(6).reshape(2, 3), "x", "d.npz")  # integers are never non-finite


def test_casts_keep_values_or_refuse():
    from mcomp.data_checks import cast
    from mcomp.errors import BadInput

    assert cast(np.ones(3, np.float64), "x", np.dtype("float32"), "d").dtype == np.float32
    assert cast(np.arange(3, dtype=np.int32), "ids", np.dtype("int64"), "d").dtype == np.int64
    with pytest.raises(BadInput, match="int64, but input 'x' expects float32"):
        cast(np.arange(3), "x", np.dtype("float32"), "d")
    with pytest.raises(BadInput, match="do not fit input 'ids' of type int8"):
        cast(np.array([0, 300]), "ids", np.dtype("int8"), "d")
    with pytest.raises(BadInput, match="float32, but input 'ids' expects int64"):
        cast(np.ones(2, np.float32), "ids", np.dtype("int64"), "d")


def test_synthetic_inputs_too_large_say_the_option(monkeypatch):
    from mcomp import data_checks
    from mcomp.errors import BadInput
    from mcomp.session import TensorSpec
    from mcomp.shapes import InputShape, fill

    monkeypatch.setattr(data_checks, "available_memory", lambda: 1 << 30)
    assumed = fill(TensorSpec("x", np.dtype("float32"), ("N", 3, "H", "W")))
    big = InputShape("x", (1, 3, 20000, 20000), "assumed", assumed.assumed_dims, assumed.placeholders)
    with pytest.raises(BadInput, match=r"'x' at 1×3×20000×20000 .* --input-shape x=1,3,H,W"):
        data_checks.check_synthetic_size({"x": big}, {"x": np.dtype("float32")}, 2)
    given = InputShape("x", (1, 3, 20000, 20000), "--input-shape")
    with pytest.raises(BadInput, match="shape from --input-shape.*give a smaller one"):
        data_checks.check_synthetic_size({"x": given}, {"x": np.dtype("float32")}, 2)
    data_checks.check_synthetic_size({"x": InputShape("x", (1, 3, 224, 224), "assumed")},
                                     {"x": np.dtype("float32")}, 8)  # 4.6 MB: fits


def test_available_memory_is_a_positive_count():
    from mcomp.data_checks import available_memory

    found = available_memory()
    assert found is None or found > 0


def test_outputs_match_by_name_then_by_count_and_shape():
    from mcomp.evaluate import match_outputs
    from mcomp.errors import BadInput
    from mcomp.session import TensorSpec

    f = np.dtype("float32")
    ref = [TensorSpec("a", f, ("N", 10)), TensorSpec("b", f, ("N", 4))]
    assert match_outputs(ref, [TensorSpec("b", f, None), TensorSpec("a", f, None)]) == [1, 0]
    assert match_outputs(ref, [TensorSpec("p", f, (1, 10)), TensorSpec("q", f, ("M", 4))]) == [0, 1]
    with pytest.raises(BadInput, match=r"c\.onnx: its outputs \['p'\].*1 output against 2"):
        match_outputs(ref, [TensorSpec("p", f, (1, 10))], where="c.onnx")
    with pytest.raises(BadInput, match=r"'q' of shape \[N, 5\] against 'b' of shape \[N, 4\]"):
        match_outputs(ref, [TensorSpec("p", f, (1, 10)), TensorSpec("q", f, ("N", 5))])


def test_non_finite_outputs_are_never_a_figure():
    from mcomp.evaluate import check_finite
    from mcomp.errors import BadInput

    check_finite([[np.ones((2, 3), np.float32)]], ["y"], "candidate")
    bad = np.ones((2, 3), np.float32)
    bad[1, 0] = np.nan
    with pytest.raises(BadInput, match=r"candidate model's output 'y' is NaN at \[1, 0\] of feed 1"):
        check_finite([[np.ones((2, 3), np.float32), bad]], ["y"], "candidate")
    with pytest.raises(BadInput, match="give --data with real ones"):
        check_finite([[bad]], ["y"], "reference", synthetic=True)


def test_unknown_provider_names_the_choices():
    from mcomp.errors import BadInput
    from mcomp.session import check_provider, resolve_providers

    assert check_provider("cpu") == "cpu"
    for call in (check_provider, resolve_providers):
        with pytest.raises(BadInput, match=r"unknown provider 'foo'; choose from cpu, cuda, auto \(available here: .*cpu"):
            call("foo")


def _with_external(tmp_path, **entry):
    """The corpus's external-data model, with its entry for W replaced by ``entry``."""
    make.write(make.BY_NAME["external-offset-past-end"], tmp_path)
    import onnx

    proto = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    del proto.graph.initializer[0].external_data[:]
    for key, value in {"location": "weights.bin", **entry}.items():
        proto.graph.initializer[0].external_data.add(key=key, value=value)
    (tmp_path / "model.onnx").write_bytes(proto.SerializeToString())
    return tmp_path / "model.onnx"


@pytest.mark.parametrize("entry, fragment", [
    ({"offset": "-4"}, r"'W': bad external data entry .*non-negative"),
    ({"offset": "0", "length": "8"}, r"'W' needs 48 bytes but .* gives length 8"),
    ({"offset": "80"}, r"'W' reads bytes 80–128 of 'weights.bin', which holds 100 bytes"),
])
def test_external_data_entries_are_checked_against_the_file(tmp_path, entry, fragment):
    from mcomp import model as model_io
    from mcomp.errors import BadInput

    path = _with_external(tmp_path, **entry)
    with pytest.raises(BadInput, match=fragment):
        model_io.load(path)
    _with_external(tmp_path, offset="52")  # 52 + 48 = 100: the last byte is the file's last
    assert model_io.load(path).model.graph.initializers["W"].const_value.numpy().shape == (4, 3)


def test_negative_pads_and_group_are_refused(tmp_path):
    import onnx

    from mcomp import model as model_io
    from mcomp.errors import BadInput

    make.write(make.BY_NAME["negative-kernel-shape"], tmp_path)
    proto = onnx.load(tmp_path / "model.onnx")
    conv = proto.graph.node[0]
    del conv.attribute[:]
    conv.attribute.extend([onnx.helper.make_attribute("kernel_shape", [3, 3]),
                           onnx.helper.make_attribute("pads", [0, -1, 0, 0])])
    (tmp_path / "model.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(BadInput, match=r"node 'conv' \(Conv\) has pads \[0, -1, 0, 0\]; its values must be non-negative"):
        model_io.load(tmp_path / "model.onnx")
    conv.attribute[1].CopyFrom(onnx.helper.make_attribute("group", 0))
    (tmp_path / "model.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(BadInput, match="has group 0; it must be at least 1"):
        model_io.load(tmp_path / "model.onnx")
