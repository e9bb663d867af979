"""How a data source is named in a pipeline file or on the command line: a path (``.npz``/``.npy``,
an image folder), ``random``, or an image folder with its preprocessing.

Kept apart from ``mcomp.data`` (which loads the arrays, and imports numpy and onnx_ir) so that
reading and validating a pipeline file costs no heavy import: a typo in a YAML file is answered
in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ImageFolderSpec(BaseModel):
    """A folder of images: one class per subfolder (sorted names → label 0..n-1), or flat (no labels)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    images: Path
    size: tuple[int, int] | None = Field(None, description="height, width; default: the model's own (static dims, --input-shape, or imgsz-style metadata)")
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = Field(1 / 255, description="multiplies pixel values before mean/std")
    layout: str = Field("NCHW", pattern="^(NCHW|NHWC)$")
    input: str | None = None
    batch_size: int = Field(16, ge=1)


DataSpec = str | Path | ImageFolderSpec

__all__ = ["DataSpec", "ImageFolderSpec"]
