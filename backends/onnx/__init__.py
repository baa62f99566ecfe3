"""The ONNX backend: deployable ONNX files (`export`: QDQ, integer-only or float) and the peer quantizers
measured against them (`ort_baselines`). Sessions and the QDQ view live in `qcompile.runtime`."""

from qcompile.backends.onnx.export import FORMATS, export

__all__ = ["export", "FORMATS"]
