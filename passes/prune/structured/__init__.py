"""Structured pruning: channel groups found on the ONNX graph, cut together."""
