"""PyTorch checkpoints in, ONNX out (design §2).

Accepted inputs:
- TorchScript archives (``torch.jit.save``), loaded with ``torch.jit.load``;
- ``torch.export`` programs (``.pt2``, ``torch.export.save``), loaded with ``torch.export.load``;
- a ``state_dict`` (``torch.save(model.state_dict())``, read with ``weights_only=True``) plus
  ``arch="module:factory"`` or ``arch="path/to/file.py:factory"``;
- a whole pickled ``nn.Module`` (``torch.save(model)``), only with ``trust=True``: unpickling
  runs code from the file.

Everything is exported with ``torch.onnx.export``: nn.Modules and programs through the
``torch.export``-based exporter (opset 18 at least; a lower requested opset is reached by
down-converting the optimized graph when :mod:`mcomp.opset` can, else the model stays at 18
and a :class:`TorchExportWarning` says so); TorchScript through the TorchScript-based exporter
(the only one that accepts a ScriptModule), at the requested opset. The batch dimension
(dim 0) is exported dynamic, named ``batch``, wherever the model allows it.

Modules: :mod:`.checkpoint` (recognising and loading checkpoints, pickles, state_dicts,
``--arch``), :mod:`.export` (torch -> ONNX), :mod:`.inputs` (example inputs, shapes, names,
the batch axis), :mod:`.common` (the warning type, silencing torch, torch's error text).

torch is imported inside the functions only: the CLI must start fast.
"""

from mcomp.torch_io.checkpoint import TORCH_SUFFIXES, is_torch_checkpoint, load_checkpoint
from mcomp.torch_io.common import TorchExportWarning
from mcomp.torch_io.export import MIN_DYNAMO_OPSET
from mcomp.torch_io.inputs import BATCH

__all__ = [
    "BATCH",
    "MIN_DYNAMO_OPSET",
    "TORCH_SUFFIXES",
    "TorchExportWarning",
    "is_torch_checkpoint",
    "load_checkpoint",
]
