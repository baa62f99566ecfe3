"""qcompile's backends: `qcompile.backends.onnx` (QDQ and integer-only ONNX) and `qcompile.backends.tvm`
(TVM-compiled integer kernels). Each is imported on first use."""

import importlib

__all__ = ["onnx", "tvm"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
