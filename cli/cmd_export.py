"""``mcomp export CHECKPOINT -o MODEL.onnx``: a PyTorch checkpoint to ONNX."""

from __future__ import annotations

from typing import Annotated

import typer

from mcomp.cli import console
from mcomp.cli.options import Arch, Debug, InputShape, Quiet, Trust, parse_input_shapes


@console.command
def export(
    checkpoint: Annotated[str, typer.Argument(help="TorchScript archive, torch.export .pt2, state_dict (with --arch) or pickled module (with --trust-checkpoint)", show_default=False)],
    output: Annotated[str, typer.Option("-o", "--output", metavar="PATH", help="ONNX path, or - for stdout", show_default=False)],
    input_shape: InputShape = None, arch: Arch = None, trust_checkpoint: Trust = False,
    quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Export a PyTorch checkpoint to ONNX (batch dim dynamic); input shapes from --input-shape where the checkpoint has none.

    Example: mcomp export net.pt --arch mynet:build --input-shape 1,3,224,224 -o net.onnx
    """
    from mcomp import model as model_io

    loaded = model_io.load(checkpoint, model_io.LoadOptions(arch, trust_checkpoint, parse_input_shapes(input_shape)))
    if loaded.source.kind != "torch":
        from mcomp.errors import BadInput

        raise BadInput(f"{checkpoint}: already an ONNX model; export takes a PyTorch checkpoint")
    written = model_io.save(loaded.model, output, protect=(checkpoint,))
    console.say(f"wrote {written.path} ({written.bytes:,} bytes)")
