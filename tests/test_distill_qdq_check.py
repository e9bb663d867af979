"""distill checks, before training, that onnxruntime computes a QDQ student as its torch copy does (issue 12).

The student with full 8-bit weights (onnxruntime's ``quantize_static``, U8S8) is computed differently by
onnxruntime's fused int8 kernels (optimization all) on an x86 CPU without VNNI: u8×s8 products saturate.
Whether the check fires therefore depends on the CPU; every test here compares the check's verdict with
its own measurement (onnxruntime at all against onnxruntime with no graph optimization, which runs the
Q/DQ arithmetic as written, as the torch copy does), so it holds on any CPU.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from clirun import run_mcomp
from mcomp import data as data_io
from mcomp import model as model_io
from mcomp.errors import BadInput
from mcomp.pass_base import Context
from mcomp.passes.distill import Distill, qdq_check
from mcomp.passes.quantize.target import cpu_flags, detect
from test_distill import ASSETS, EVAL, qdq_student, teacher

FEEDS = {"image": EVAL["image"][:16]}
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def students():
    return {"8-bit": qdq_student(reduce_range=False), "7-bit": qdq_student(reduce_range=True)}


def saturates(student) -> bool:
    """The test's own measurement: onnxruntime at all against no graph optimization, 2% of the largest logit."""
    def logits(level):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        return ort.InferenceSession(model_io.to_bytes(student), options, providers=CPU).run(None, FEEDS)[0]

    fused, written = logits(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), logits(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return float(np.abs(fused - written).max()) > 0.02 * float(np.abs(fused).max())


def distill(student, **options):
    ctx = Context(reference=teacher(), data={"training": data_io.Dataset([FEEDS], EVAL["labels"][:16], False, "test")},
                  threads=1)
    return Distill(epochs=1, lr=0.01, batch_size=16, val_split=0, **options)(model_io.copy(student), ctx)


@pytest.mark.parametrize("bits", ["8-bit", "7-bit"])
def test_the_checks_verdict_is_the_measured_one(students, bits):
    student = students[bits]
    expected = saturates(student)
    if bits == "7-bit":
        assert not expected  # 7-bit weights cannot saturate: the same arithmetic on every CPU
    elif "avx2" in cpu_flags() and not detect(CPU).vnni:
        assert expected  # the CPU: AVX2 without VNNI
    verdict = qdq_check.check(student, FEEDS, CPU, 1, strict=False)
    assert (verdict is not None) == expected, verdict
    if expected:
        assert "optimization all" in verdict and "re-quantize with 7-bit weights" in verdict
        with pytest.raises(BadInput, match=r"7-bit weights \(mcomp quantize does that on this CPU\).*--no-qdq-check"):
            qdq_check.check(student, FEEDS, CPU, 1, strict=True)


def test_distill_refuses_a_student_onnxruntime_computes_otherwise_or_trains_it(students):
    student = students["8-bit"]
    if saturates(student):
        with pytest.raises(BadInput, match="saturate u8×s8 products|compute it otherwise"):
            distill(student)
        result = distill(student, qdq_check=False)  # the stated fallback: trained as written, and said so
        assert any("--no-qdq-check" in note and "at optimization basic" in note for note in result.notes)
    else:
        result = distill(student)
        assert not any("torch copy" in note for note in result.notes)
    assert result.details["quantized"]["tensors"] >= 5


def test_a_7bit_student_trains_on_every_cpu(students):
    result = distill(students["7-bit"])
    assert not any("torch copy" in note for note in result.notes)


def test_the_cli_says_it_in_one_line_with_exit_2(students, tmp_path):
    onnx.save(model_io.to_proto(students["8-bit"]), tmp_path / "student.onnx")
    np.savez(tmp_path / "train.npz", image=EVAL["image"][:32], labels=EVAL["labels"][:32])
    res = run_mcomp("distill", "student.onnx", "--teacher", ASSETS / "digits_cnn.onnx", "--data", "train.npz",
                    "--epochs", "1", "--threads", "1", "-o", "out.onnx", cwd=tmp_path)
    if saturates(students["8-bit"]):
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "7-bit weights" in res.stderr, res.stderr
        assert not (tmp_path / "out.onnx").exists()
    else:
        assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("apart, verdict", [(0.05, "note"), (0.5, "refused")])
def test_a_torch_copy_apart_by_rounding_trains_with_a_note_and_a_wrong_one_is_refused(students, monkeypatch, apart,
                                                                                       verdict):
    """Through a deep QDQ net (EfficientWord-Net's ResNet-50), torch's and onnxruntime's float kernels round a few
    values across a quantization step, and the steps add up: 5.8 % of the output apart at the end, as far at basic
    as at all. That was refused ("not the model onnxruntime runs"); where no kernel can saturate (7-bit weights
    here, or a VNNI CPU) it is trained with a note. A copy half the output apart is still refused."""
    from mcomp import evaluate

    student = students["7-bit"]
    written = evaluate.session(model_io.to_bytes(student), CPU, 1, optimization="basic").run(None, FEEDS)
    shifted = [w.copy() for w in written]
    shifted[0].flat[0] += apart * float(np.abs(written[0]).max())
    monkeypatch.setattr(qdq_check, "torch_outputs", lambda model, feeds: shifted)
    if verdict == "note":
        note = qdq_check.check(student, FEEDS, CPU, 1, strict=True)
        assert note is not None and "round a few values across a quantization step" in note and "trained" in note
    else:
        with pytest.raises(BadInput, match="even at basic"):
            qdq_check.check(student, FEEDS, CPU, 1, strict=True)


def test_only_full_8bit_weights_on_x86_without_vnni_can_saturate(students):
    from mcomp.passes.quantize.target import Target

    assert qdq_check._saturable(students["8-bit"], Target("cpu", "x86", vnni=False))
    assert not qdq_check._saturable(students["7-bit"], Target("cpu", "x86", vnni=False))
    assert not qdq_check._saturable(students["8-bit"], Target("cpu", "x86", vnni=True))
    assert not qdq_check._saturable(students["8-bit"], Target("cpu", "arm", vnni=False))
