"""What the target provider and CPU run well: activation type, reduced range, and which ops fuse.

On x86, onnxruntime's int8 kernels multiply uint8 activations by int8 weights (VPMADDUBSW,
or VPDPBUSD with VNNI); int8 activations take a slower path, which is why static QDQ with
int8 activations comes out slower than float. Without VNNI the u8·s8 products saturate
16-bit intermediates, so weights use 7 bits (``reduce_range``). ARM's dot-product kernels
want int8 activations. A Q/DQ pair only disappears where the provider has a fused kernel
for the op between them; elsewhere it costs two passes over the tensor.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

# Ops whose weights make the int8 gain: onnxruntime fuses DQ→op→Q into QLinearConv, QGemm, QLinearMatMul…
COMPUTE_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")
# Ops with int8 kernels on CPU (QLinearAdd, QLinearConcat, QLinearAveragePool, QLinearSigmoid …)
# that keep a chain in int8 between compute ops.
INT8_FLOW_OPS = ("Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu",
                 "Softmax", "Where", "Resize")
# Ops that move or select values: onnxruntime drops the Q/DQ around them when the scales match.
PASS_THROUGH_OPS = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather",
                    "Slice", "Split", "Relu", "Clip", "Pad")
# Nodes never quantized statically, with the reason the report gives.
FLOAT_ONLY = {
    "LSTM": "recurrent op: no static int8 kernel (dynamic mode quantizes its weights)",
    "GRU": "recurrent op: no static int8 kernel (dynamic mode quantizes its weights)",
    "RNN": "recurrent op: no static int8 kernel",
}


@dataclass(frozen=True)
class Target:
    provider: str  # "cpu" or "cuda"
    arch: str  # "x86", "arm" or another platform.machine()
    vnni: bool

    @property
    def activations(self) -> str:
        """uint8 where the int8 kernels multiply u8·s8 (x86 CPU), int8 elsewhere."""
        return "uint8" if self.provider == "cpu" and self.arch == "x86" else "int8"

    @property
    def reduce_range(self) -> bool:
        return self.provider == "cpu" and self.arch == "x86" and not self.vnni

    def describe(self) -> str:
        extra = (", VNNI" if self.vnni else ", no VNNI: 7-bit weights") if self.arch == "x86" else ""
        return f"{self.provider} {self.arch}{extra}"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect(providers: list[str]) -> Target:
    machine = platform.machine().lower()
    arch = "x86" if machine in ("x86_64", "amd64", "i386", "i686") else ("arm" if machine.startswith(("arm", "aarch")) else machine)
    flags = cpu_flags()
    vnni = bool({"avx512_vnni", "avx_vnni", "avx_vnni_int8"} & flags)
    provider = "cuda" if providers and providers[0] == "CUDAExecutionProvider" else "cpu"
    return Target(provider, arch, vnni)
