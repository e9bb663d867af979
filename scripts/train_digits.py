"""Train the small CNN that mcomp ships as its default model, and write its assets.

Data: scikit-learn's bundled ``load_digits`` (1797 grey 8x8 images, 10 classes; no download).
Stratified 70 % / 30 % split with a fixed seed; pixels scaled to [0, 1] (divided by 16).

Writes (into core/assets/ unless --out is given):
  digits_cnn.onnx    input ``image`` [N,1,8,8] float32, output ``logits`` [N,10], opset 17,
                     dynamic batch; BatchNormalization and Dropout (as Identity) are kept
                     unfused so the graph-optimize pass has real work to do
  digits_cnn.pt      state_dict of the trained module (architecture: scripts/digits_arch.py)
  digits_train.npz   train split: ``image`` float32 [N,1,8,8], ``labels`` int64 [N]
  digits_eval.npz    held-out split, same keys

Deterministic (fixed seeds, one thread, deterministic algorithms); runs in seconds on a CPU.
Usage: python scripts/train_digits.py [--out DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402

from digits_arch import digits_cnn  # noqa: E402

SEED = 0
OPSET = 17


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # [N,1,8,8] in [0,1]
    labels = digits.target.astype(np.int64)
    x_tr, x_ev, y_tr, y_ev = train_test_split(
        images, labels, test_size=0.30, stratify=labels, random_state=SEED
    )
    return (
        np.ascontiguousarray(x_tr),
        np.ascontiguousarray(x_ev),
        np.ascontiguousarray(y_tr),
        np.ascontiguousarray(y_ev),
    )


def train(x_tr: np.ndarray, y_tr: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(SEED)
    model = digits_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(SEED)
    batch = 64
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            xb = xt[idx]
            # light augmentation: random shift by up to one pixel (zero padded)
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            if dy == 1:
                xb[:, :, 0, :] = 0
            elif dy == -1:
                xb[:, :, -1, :] = 0
            if dx == 1:
                xb[:, :, :, 0] = 0
            elif dx == -1:
                xb[:, :, :, -1] = 0
            opt.zero_grad()
            loss = loss_fn(model(xb), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 10 == 0 or epoch == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / len(xt):.4f}", file=sys.stderr)
    return model.eval()


def export_onnx(model: nn.Module, path: Path) -> onnx.ModelProto:
    """Export with the torch.export-based exporter, *without* its graph optimizer.

    ``optimize=False`` keeps BatchNormalization, the Dropout (an Identity in eval mode) and the
    dynamic-batch shape arithmetic in the graph, i.e. exactly what mcomp's optimize pass is
    meant to clean up. ``external_data=False``: the default (True) writes a ``.onnx.data``
    sidecar even for a tiny model, and the asset must be a single file.
    """
    example = (torch.zeros(2, 1, 8, 8),)
    # torch.onnx: "using opset 18, converting to 17" and torchvision notices; onnxscript: the
    # 18 -> 17 down-conversion falls back to onnx's C API converter (works; checked below).
    for name in ("torch.onnx", "onnxscript.version_converter"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            optimize=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        program.save(tmp_path, external_data=False)
        proto = onnx.load(str(tmp_path))
    proto.doc_string = "mcomp default model: small CNN on sklearn load_digits (scripts/train_digits.py)"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE.parent / "core" / "assets")
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    np.random.seed(SEED)
    t0 = time.perf_counter()

    x_tr, x_ev, y_tr, y_ev = load_split()
    model = train(x_tr, y_tr, args.epochs)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_ev)).numpy()
    torch_acc = float((torch_logits.argmax(1) == y_ev).mean())

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "digits_cnn.onnx"
    proto = export_onnx(model, onnx_path)
    torch.save(model.state_dict(), out / "digits_cnn.pt")
    np.savez(out / "digits_train.npz", image=x_tr, labels=y_tr)
    np.savez(out / "digits_eval.npz", image=x_ev, labels=y_ev)

    # -- verify the ONNX model against torch ------------------------------------------------
    ops = Counter(n.op_type for n in proto.graph.node)
    opset = {o.domain: o.version for o in proto.opset_import}
    assert opset.get("", opset.get("ai.onnx")) == OPSET, f"opset is {opset}"
    assert ops["BatchNormalization"] == 3, f"BatchNormalization was fused away: {dict(ops)}"
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.HasField("dim_param"), "batch axis is not dynamic"
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (ort_logits,) = sess.run(["logits"], {"image": x_ev})
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    assert max_diff < 1e-4, f"onnxruntime and torch disagree: max abs diff {max_diff}"
    (one,) = sess.run(["logits"], {"image": x_ev[:1]})  # dynamic batch works
    assert one.shape == (1, 10)
    onnx_acc = float((ort_logits.argmax(1) == y_ev).mean())
    assert onnx_acc >= 0.97, f"held-out accuracy {onnx_acc:.4f} < 0.97"

    print(f"train {len(y_tr)} / held-out {len(y_ev)} images")
    print(f"ops: {dict(sorted(ops.items()))}")
    print(f"torch held-out accuracy {torch_acc:.4f}")
    print(f"onnx  held-out accuracy {onnx_acc:.4f}  (max |ort - torch| = {max_diff:.2e})")
    for name in ("digits_cnn.onnx", "digits_cnn.pt", "digits_train.npz", "digits_eval.npz"):
        print(f"{out / name}: {(out / name).stat().st_size} bytes")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
