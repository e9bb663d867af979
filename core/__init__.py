"""mcomp: make trained networks smaller and faster, and prove it with a report.

The package root holds the core: model I/O, the Pass protocol and registry, pipelines,
data, onnxruntime sessions and benchmarking, metrics and reports. Heavy dependencies
(torch, onnxruntime) are imported where they are used, so `mcomp passes` stays fast.
"""

__version__ = "0.1.0"
