"""``mcomp quantize`` (static) on GPT-2 with a large vocabulary, the command issue 13 found slowest.

Its latency guard timed the data file's batch of 16×128 tokens, every round of every candidate
(the logits alone 0.4 GB a run at GPT-2's 50,257 tokens), and its fidelity checks made float64
copies of whole logits and read percentiles over all of them. A vocabulary of 10,000 keeps the
same code paths (logits of 20 M elements a feed: past ``kernels.fidelity.AXES_SAMPLE``, so the
channel-like axes are read from leading batch items) at a fifth of the size.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from clirun import run_mcomp

pytest.importorskip("transformers")
import transformer_models as tm  # noqa: E402

from mcomp.kernels.fidelity import AXES_SAMPLE  # noqa: E402

VOCAB = 10_000
BATCH, SEQ = 16, 128


@pytest.mark.slow
def test_static_quantize_times_the_latency_rows_shapes_and_compares_every_logit(tmp_path):
    model = tm.build("gpt2", vocab=VOCAB)
    shutil.copy(model.path, tmp_path / "gpt2.onnx")
    np.savez(tmp_path / "tokens.npz", **model.feeds(batch=BATCH, seq=SEQ, seed=0))
    assert BATCH * SEQ * VOCAB > AXES_SAMPLE  # the sampled path of channel_axes is the one exercised

    res = run_mcomp("quantize", "gpt2.onnx", "--data", "tokens.npz", "--guard-runs", "5", "--runs", "3",
                    "-o", "gpt2.q.onnx", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    report = json.loads((tmp_path / "gpt2.q.report.json").read_text())
    step = report["steps"][0]

    # the guard timed what the latency row times (one sequence of the data), not the file's batch of 16
    timed = report["latency"]["feed_shapes"]
    assert timed == {"input_ids": [1, SEQ]}
    assert step["changes"]["guard_feed_shapes"] == timed
    assert step["changes"]["latency_guard"]["trials"]

    # fidelity is over every logit of the one feed, none left out
    measured = report["data"]["measured_on"]
    assert measured["samples"] == BATCH
    assert not any("feeds" in note for note in measured["notes"]), measured
    summary = report["fidelity"]["summary"]
    assert 0.9 < summary["cosine"] <= 1.0 + 1e-9
    assert summary["worst_slice"] is None  # logits have no channel-like axis (128 positions of one scale)
