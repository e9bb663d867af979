import textwrap

import pytest

from mcomp.errors import ConfigError
from mcomp.pipeline_spec import load_text


def load(text: str):
    return load_text(textwrap.dedent(text), "pipe.yaml")


def test_valid_pipeline_with_defaults():
    p = load("""
        model: m.onnx
        steps:
          - optimize: {level: extended}
          - optimize:
        gate: {max_accuracy_drop: 0.01}
    """)
    assert [s.name for s in p.steps] == ["optimize", "optimize"]
    assert p.steps[0].config.level == "extended" and p.steps[1].config.level == "basic"
    assert p.gate.max_accuracy_drop == 0.01 and p.provider == "auto"


@pytest.mark.parametrize("text, fragments", [
    ("""
     model: m.onnx
     steps:
       - optimize: {}
       - prunez: {rate: 0.5}
     """, ["pipe.yaml:5:", "unknown pass 'prunez'", "valid: ", "optimize"]),
    ("""
     steps:
       - optimize:
           levle: basic
     """, ["pipe.yaml:4:", "unknown option 'levle'", "valid: level, tolerance"]),
    ("""
     steps:
       - optimize: {level: turbo}
     """, ["pipe.yaml:3:", "steps[0].optimize.level", "'none', 'basic', 'extended' or 'all'"]),
    ("""
     steps:
       - optimize: {}
     gate:
       max_acuracy_drop: 0.1
     """, ["pipe.yaml:5:", "unknown option 'max_acuracy_drop'", "max_accuracy_drop"]),
    ("""
     stepz:
       - optimize: {}
     """, ["pipe.yaml:", "'steps' must be a non-empty list"]),
    ("""
     steps: [optimize: {level: basic}
     """, ["pipe.yaml:", "not valid YAML"]),
    ("""
     steps:
       - optimize: {}
     provider: tpu
     """, ["pipe.yaml:4:", "provider"]),
])
def test_errors_name_file_line_key_and_choices(text, fragments):
    with pytest.raises(ConfigError) as info:
        load(text)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_paths_resolve_against_the_file(tmp_path):
    p = load_text("model: sub/m.onnx\nsteps: [optimize: {}]\n", "x.yaml", base_dir=tmp_path)
    assert p.resolve(p.model) == str(tmp_path / "sub" / "m.onnx")
    assert p.resolve("random") == "random"
    assert p.resolve("builtin:digits").endswith("digits_cnn.onnx")


def test_file_options_of_a_step_resolve_against_the_pipeline_folder(tmp_path):
    p = load_text("steps:\n  - distill: {teacher: models/big.onnx, epochs: 1}\n", "x.yaml", base_dir=tmp_path)
    assert p.steps[0].config.teacher == str(tmp_path / "models" / "big.onnx")
    q = load_text("steps:\n  - distill: {teacher: /abs/big.onnx}\n", "x.yaml", base_dir=tmp_path)
    assert q.steps[0].config.teacher == "/abs/big.onnx"
