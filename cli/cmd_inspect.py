"""``mcomp inspect MODEL``: what is inside a model."""

from __future__ import annotations

import json as jsonlib
import sys

from mcomp.cli import console
from mcomp.cli.options import Arch, Debug, InputShape, Json, ModelArg, Quiet, Trust, parse_input_shapes
from mcomp.cli.render import print_inspect


@console.command
def inspect(model: ModelArg, json: Json = False, input_shape: InputShape = None, arch: Arch = None,
            trust_checkpoint: Trust = False, quiet: Quiet = False, debug: Debug = False) -> None:
    """Inputs and outputs (with dynamic dims), opsets, op histogram, parameters, non-zeros, bytes by dtype, MACs.

    MACs of Conv/ConvTranspose/Gemm/MatMul use --input-shape for dynamic dims, else 1.

    Example: mcomp inspect model.onnx --input-shape x=1,3,224,224 --json
    """
    from mcomp import data, model as model_io, summary

    shapes = parse_input_shapes(input_shape)
    loaded = model_io.load(model, model_io.LoadOptions(arch, trust_checkpoint, shapes))
    info = {"path": loaded.source.path, "bytes": loaded.source.bytes, "sha256": loaded.source.sha256,
            "kind": loaded.source.kind}
    info |= summary.describe(loaded.model, input_shapes=data.bind_input_shapes(shapes, loaded.model))
    if json:
        sys.stdout.write(jsonlib.dumps(info, indent=2) + "\n")
    else:
        print_inspect(loaded.source.path, info)
