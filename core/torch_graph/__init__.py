"""A trainable ``torch.nn.Module`` built from an ONNX graph, and its weights written back.

Training passes (distillation, fine-tuning, Taylor importance for pruning) need a
differentiable copy of the model (design §2).  :class:`OnnxModule` is that copy: an
interpreter that walks the graph's nodes in topological order and calls torch ops.

The package, by seam (each module's docstring has the details):

- :mod:`~mcomp.torch_graph.module`: :class:`OnnxModule`, :func:`to_torch`, :func:`write_back`;
  which stored tensors become parameters or buffers, which are trainable by default, and
  how the weights go back into the ONNX model.
- :mod:`~mcomp.torch_graph.compiler`: a graph compiled into a program of steps over slots,
  topological order, outer-scope reads of subgraphs, and the op registry (``_op``,
  :func:`supported_ops`).
- :mod:`~mcomp.torch_graph.tensors`: ONNX data types to torch dtypes, tensor conversion.
- :mod:`~mcomp.torch_graph.errors`: :class:`UnsupportedOp` and the internal ``_Unsupported``.
- :mod:`~mcomp.torch_graph.ops`: the op handlers by family (``elementwise``, ``nn``,
  ``shape``, ``reduction``, ``resize``, ``control`` for If/Loop, ``rnn`` for LSTM/GRU/RNN,
  ``quant`` for QDQ fake-quantization, ``ml`` for scikit-learn's); importing the package registers them all.

Why an interpreter of our own on ``onnx_ir`` rather than a converter library: onnx2torch
(last release 1.5.15, August 2024) has no converter for If, Loop (its issue #204) or
QuantizeLinear/DequantizeLinear, and none released for LSTM or GRU (issues #136 and #233
are open; the pull request adding them leaves out ``sequence_lens``, peepholes and clip),
converts some ops only from newer opsets (NonZero from opset 11, issue #61), and rebuilds
the graph as an fx module whose weights would have to be mapped back by hand.  The models
this project compresses (PP-OCR at opset 11/12 with every weight in a Constant node, Silero
VAD with ``If`` nested four deep and its weights inside the branches, QDQ students) need
If/LSTM, old opsets and an exact way back to the same tensors, which an interpreter over
the graph gives for free.

Unsupported ops (or unsupported settings of supported ops) are all reported at
construction time in one :class:`UnsupportedOp`, subgraphs included: ops outside the
default domain (``com.microsoft`` fused ops, model-local functions; of ``ai.onnx.ml``, the five
skl2onnx writes around a network run: ``ops.ml``), Scan, the sequence and
random ops, string tensors, float8.  The module cannot be pickled whole (its ops are
closures): keep its ``state_dict`` or write the weights back into the ONNX model.
``copy.deepcopy`` works (a teacher and a student from one model).
"""

from __future__ import annotations

from mcomp.torch_graph.compiler import supported_ops
from mcomp.torch_graph.errors import UnsupportedOp
from mcomp.torch_graph.module import OnnxModule, to_torch, write_back

# Imported for its side effect: every op module registers its handlers in the compiler's
# registry, so supported_ops() and the compiler see all of them.
from mcomp.torch_graph import ops  # noqa: E402,F401  isort: skip

__all__ = ["OnnxModule", "UnsupportedOp", "supported_ops", "to_torch", "write_back"]
