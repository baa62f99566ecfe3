"""The ONNX backend: QDQ export (`export`) and ONNX Runtime helpers (`runtime`)."""

from qcompile.backends.onnx.export import FORMATS, export

__all__ = ["export", "FORMATS"]
