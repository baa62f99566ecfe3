"""The `qcompile` ONNX function domain of the integer kernels, and registering kernels on a model."""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.values import Opset

__all__ = ["DOMAIN", "QCOMPILE_OPSET", "add_function"]

DOMAIN = "qcompile"
QCOMPILE_OPSET = Opset(DOMAIN, 1)


def add_function(model: ir.Model, kernel) -> None:
    """Register the onnxscript function `kernel` on `model` (once) and import the default opset it needs."""
    proto = kernel.to_function_proto()
    key = (proto.domain, proto.name, "")
    if key not in model.functions:
        model.functions[key] = ir.serde.deserialize_function(proto)
    model.opset_imports.setdefault(DOMAIN, 1)
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            model.opset_imports[""] = max(model.opset_imports.get("", 1), opset.version)
